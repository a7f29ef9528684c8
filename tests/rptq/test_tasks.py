"""Local zero-shot tasks against lm-eval's stock tasks: the stock side is built by the harness itself from its
installed YAML (only datasets.load_dataset is faked, so nothing is downloaded), the local side from our config."""
import collections
import dataclasses
import json
import pathlib
import re

import datasets
import pytest

import rptq.base
from rptq.tasks import LOCAL_TASKS, TaskError, describe_task_data, local_tasks, plan_tasks, stock_entry

# The first item of each local file as the stock data set on the hub holds it (public ARC, OpenBookQA, PIQA, BoolQ
# records). lambada_openai's file is the stock data itself, so its stock document is read from it.
STOCK_FIRST_DOCS = {
    "piqa": {"goal": "How do I ready a guinea pig cage for it's new occupants?",
             "sol1": "Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, "
                     "you will also need to supply it with a water bottle and a food dish.",
             "sol2": "Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans "
                     "material, you will also need to supply it with a water bottle and a food dish.",
             "label": 0},
    "arc_easy": {"id": "Mercury_417466",
                 "question": "Which statement best explains why photosynthesis is the foundation of most food webs?",
                 "choices": {"text": ["Sunlight is the source of energy for nearly all ecosystems.",
                                      "Most ecosystems are found on land instead of in water.",
                                      "Carbon dioxide is more available than other gases.",
                                      "The producers in all ecosystems are plants."],
                             "label": ["A", "B", "C", "D"]},
                 "answerKey": "A"},
    "arc_challenge": {"id": "Mercury_7175875",
                      "question": "An astronomer observes that a planet rotates faster after a meteorite impact. "
                                  "Which is the most likely effect of this increase in rotation?",
                      "choices": {"text": ["Planetary density will decrease.", "Planetary years will become longer.",
                                           "Planetary days will become shorter.",
                                           "Planetary gravity will become stronger."],
                                  "label": ["A", "B", "C", "D"]},
                      "answerKey": "C"},
    "openbookqa": {"id": "8-343",
                   "question_stem": "A person wants to start saving money so that they can afford a nice vacation at "
                                    "the end of the year. After looking over their budget and expenses, they decide "
                                    "the best way to save money is to",
                   "choices": {"text": ["make more phone calls", "quit eating lunch out",
                                        "buy less with monopoly money", "have lunch with friends"],
                               "label": ["A", "B", "C", "D"]},
                   "answerKey": "B"},
}
BOOLQ_TITLE = "Ethanol fuel -- "  # super_glue's passages start with the Wikipedia page title; the copy's do not

# What may differ between a local task's config and the stock one: where the documents come from.
DATA_SOURCE_FIELDS = {"task", "tag", "custom_dataset", "dataset_path", "dataset_name", "dataset_kwargs",
                      "training_split", "validation_split", "test_split", "fewshot_split", "fewshot_config", "metadata"}


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _stock_docs(name, data):
    if name == "lambada_openai":
        return _lines(data / "lambada/lambada_test.jsonl")[:1]
    if name == "boolq":
        passage = _lines(data / "llm-foundry-icl/boolq.jsonl")[0]["query"].split("\n")[0].removeprefix("Passage: ")
        return [{"question": "does ethanol take more energy make that produces", "passage": BOOLQ_TITLE + passage,
                 "label": 0, "idx": 0}]
    return [STOCK_FIRST_DOCS[name]]


def build_stock_task(name, docs):
    """The stock task exactly as lm-eval builds it from its installed YAML, fed the given documents."""
    import lm_eval.tasks

    folder = pathlib.Path(lm_eval.tasks.__file__).parent / LOCAL_TASKS[name].stock_folder
    asked = []

    def fake_load_dataset(path, name=None, **kwargs):
        asked.append(path)
        return collections.defaultdict(lambda: datasets.Dataset.from_list(docs))  # any split the config names

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets, "load_dataset", fake_load_dataset)
        task = lm_eval.tasks.TaskManager(include_path=folder, include_defaults=False).load([name])["tasks"][name]
    assert asked == [task.config.dataset_path] and not asked[0].startswith("/")  # the hub data set, not a file
    return task


@pytest.fixture(scope="module")
def local_harness_tasks(task_data_dir):
    """Our local tasks as the harness builds them from plan_tasks' configs, reading the real files."""
    planned, manager = plan_tasks(list(LOCAL_TASKS), task_data_dir)
    built = manager.load([p.spec for p in planned])["tasks"]
    return {p.name: built[p.harness_name] for p in planned}


def rendered(task, doc):
    choices = task.doc_to_choice(doc) if task.config.doc_to_choice is not None else None  # lambada: no choices
    return task.doc_to_text(doc), choices, task.doc_to_target(doc)


@pytest.mark.parametrize("name", list(LOCAL_TASKS))
def test_local_task_gives_the_stock_prompt_choices_and_target(name, local_harness_tasks, task_data_dir):
    local = local_harness_tasks[name]
    stock = build_stock_task(name, _stock_docs(name, task_data_dir))
    text, choices, target = rendered(local, local.eval_docs[0])
    stock_text, stock_choices, stock_target = rendered(stock, stock.eval_docs[0])
    if name == "boolq":  # the one known difference, named in the task's label
        assert stock_text.startswith(BOOLQ_TITLE) and "without page titles" in LOCAL_TASKS[name].variant
        stock_text = stock_text.removeprefix(BOOLQ_TITLE)
    assert (text, choices, target) == (stock_text, stock_choices, stock_target)
    for field in {f.name for f in dataclasses.fields(stock.config)} - DATA_SOURCE_FIELDS:
        assert getattr(local.config, field) == getattr(stock.config, field), field
    assert local.OUTPUT_TYPE == stock.OUTPUT_TYPE and local._aggregation_list == stock._aggregation_list
    stock_split = stock.config.test_split or stock.config.validation_split
    assert (local.config.test_split or local.config.validation_split) == stock_split == LOCAL_TASKS[name].split


@pytest.mark.parametrize("name", ["lambada_openai", "piqa"])
def test_original_files_give_the_stock_prompts_item_by_item(name, local_harness_tasks, task_data_dir):
    """These files are the stock data itself: the stock task on the raw rows must agree with the local task."""
    rows = _lines(task_data_dir / LOCAL_TASKS[name].files[0])[:40]
    if name == "piqa":
        labels = (task_data_dir / "piqa/valid-labels.lst").read_text().split()
        rows = [{**row, "label": int(label)} for row, label in zip(rows, labels)]
    stock, local = build_stock_task(name, rows), local_harness_tasks[name]
    assert [rendered(local, d) for d in list(local.eval_docs)[:40]] == [rendered(stock, d) for d in stock.eval_docs]


@pytest.mark.parametrize("name", ["arc_easy", "arc_challenge", "openbookqa", "boolq"])
def test_llm_foundry_rows_are_recovered_without_loss(name, local_harness_tasks, task_data_dir):
    """Every row of the reformatted copy follows from the stock prompt on the recovered fields, so the recovery keeps
    all the copy has; ARC loses only the repeated padding choice, BoolQ only the case of 'question' in passages."""
    task = local_harness_tasks[name]
    rows = _lines(task_data_dir / LOCAL_TASKS[name].files[0])
    docs = list(task.eval_docs)
    assert len(docs) == len(rows)
    # every fifth row (rendering is slow) and every row the copy altered: padded choices, split passages
    altered = [i for i, row in enumerate(rows)
               if len(set(row["choices"])) < len(row["choices"]) or row["query"].count("\n") > 1]
    assert len(altered) == {"arc_easy": 7, "arc_challenge": 4, "openbookqa": 0, "boolq": 22}[name]
    for row, doc in ((rows[i], docs[i]) for i in sorted(set(range(0, len(rows), 5)) | set(altered))):
        text, choices, target = rendered(task, doc)
        assert choices[target] == row["choices"][row["gold"]]
        if name == "boolq":
            copy_text = re.sub(" question", "\nQuestion", text.removesuffix("\nAnswer:"), flags=re.IGNORECASE)
            assert "Passage: " + copy_text == row["query"] and choices == row["choices"]
            assert "\n" not in doc["passage"]  # BoolQ passages are one line
        else:
            assert text == row["query"] + ("\nAnswer:" if name.startswith("arc") else "")
            assert set(choices) == set(row["choices"]) and len(choices) == len(set(row["choices"]))


def test_padded_arc_items_get_their_three_choices_back(local_harness_tasks):
    docs = list(local_harness_tasks["arc_easy"].eval_docs)
    three = [d for d in docs if len(d["choices"]["text"]) == 3]
    assert len(three) == 7 and all(d["choices"]["label"] == ["A", "B", "C"] for d in three)
    assert len(list(local_harness_tasks["arc_challenge"].eval_docs)) == 1172


def test_a_task_is_local_only_with_all_its_files(tmp_path):
    (tmp_path / "piqa").mkdir()
    (tmp_path / "piqa/valid.jsonl").write_text("")
    assert local_tasks(["piqa"], tmp_path) == {}  # the labels file is missing
    (tmp_path / "piqa/valid-labels.lst").write_text("")
    assert list(local_tasks(["piqa", "hellaswag"], tmp_path)) == ["piqa"]
    assert local_tasks(["piqa"], None) == {}


def test_unreadable_task_file_and_unknown_task_are_task_errors(tmp_path):
    (tmp_path / "piqa").mkdir()
    (tmp_path / "piqa/valid.jsonl").write_text('{"goal": "g", "sol1": "a", "sol2": "b"}\n')
    (tmp_path / "piqa/valid-labels.lst").write_text("0\n1\n")
    with pytest.raises(TaskError, match="2 labels for the 1 items"):
        plan_tasks(["piqa"], tmp_path)
    with pytest.raises(TaskError, match="unknown lm-evaluation-harness task 'no_such_task'"):
        stock_entry("no_such_task", "piqa")


@pytest.fixture
def no_hub(monkeypatch):
    for var in ("RPTQ_DATA_DIR", "HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(rptq.base, "hub_reachable", lambda *a, **k: False)


def test_tasks_need_a_data_folder_or_the_hub(task_data_dir, no_hub):
    with pytest.raises(TaskError, match="hub cannot be reached and no data folder is given.*data_dir"):
        plan_tasks(["piqa"], None)
    assert len(plan_tasks(list(LOCAL_TASKS), task_data_dir)[0]) == len(LOCAL_TASKS)
    with pytest.raises(TaskError, match=f"tasks hellaswag: .*{re.escape(str(task_data_dir))} has no files"):
        plan_tasks(["piqa", "hellaswag"], task_data_dir)
    with pytest.raises(TaskError, match="num_fewshot 5: the local files of piqa"):
        plan_tasks(["piqa"], task_data_dir, num_fewshot=5)


def test_an_unknown_task_is_named_before_the_hub_is_blamed(no_hub):
    with pytest.raises(TaskError, match="unknown lm-evaluation-harness task 'no_such_task'"):
        plan_tasks(["no_such_task"], None)


def test_task_data_is_recorded_by_path_inside_the_folder_and_content(task_data_dir):
    entries = describe_task_data(["piqa", "hellaswag"], task_data_dir)
    assert [e["file"] for e in entries if "file" in e] == ["piqa/valid.jsonl", "piqa/valid-labels.lst"]
    assert all(len(e["sha256"]) == 64 for e in entries if "file" in e)
    assert entries[-1] == {"task": "hellaswag", "hub": "stock task"}
