"""Zero-shot tasks for lm-evaluation-harness: its stock tasks (data from the hub), or, where the data folder holds a
task's files, a local task: the stock task's own installed config (prompt, choices, target, metrics) with only the
data source replaced by the local file, whose rows are put back into the fields of the stock data set.

The local files and their caveats are described in shared/offline-data/MANIFEST.md.
"""
from __future__ import annotations

import copy
import functools
import json
import pathlib
from dataclasses import dataclass
from typing import Callable

from .base import RPTQError


class TaskError(RPTQError):
    """Zero-shot evaluation could not run (unknown task, unreadable task file, harness failure)."""


def _jsonl(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _piqa_docs(paths):
    questions, labels_file = paths
    rows, labels = _jsonl(questions), labels_file.read_text().split()
    if len(rows) != len(labels):
        raise TaskError(f"{labels_file} has {len(labels)} labels for the {len(rows)} items of {questions}")
    return [{**row, "label": int(label)} for row, label in zip(rows, labels)]


def _lettered(choices, gold):
    """Choices as the stock multiple-choice sets store them: texts with letter labels, the answer as a letter."""
    letters = "ABCDE"[:len(choices)]
    return {"text": list(choices), "label": list(letters)}, letters[gold]


def arc_doc(row):
    # The llm-foundry copy padded 3-choice items to 4 by repeating a choice: dropping the repeat restores them.
    # The 5-choice items it cut to 4 cannot be restored, hence the label of these tasks.
    choices = list(dict.fromkeys(row["choices"]))
    choice_set, answer = _lettered(choices, choices.index(row["choices"][row["gold"]]))
    return {"question": row["query"].removeprefix("Question: "), "choices": choice_set, "answerKey": answer}


def openbookqa_doc(row):
    choice_set, answer = _lettered(row["choices"], row["gold"])
    return {"question_stem": row["query"], "choices": choice_set, "answerKey": answer}


def boolq_doc(row):
    passage, question = row["query"].rsplit("\nQuestion: ", 1)
    # The copy turned every " question" inside a passage into "\nQuestion" (BoolQ passages are one line), so the
    # case of those 33 words is lost; its passages also lack the "Page title -- " prefix of super_glue's.
    passage = passage.removeprefix("Passage: ").replace("\nQuestion", " question")
    return {"passage": passage, "question": question.removesuffix("?"), "label": row["gold"]}


def _converted(convert):
    return lambda paths: [convert(row) for row in _jsonl(paths[0])]


@dataclass(frozen=True)
class LocalTask:
    stock_folder: str  # under lm_eval/tasks: the folder of the stock task's YAML
    files: tuple[str, ...]  # under the data folder
    split: str  # the stock split the files hold
    variant: str  # what the copy is, shown with every result
    read: Callable[[list[pathlib.Path]], list[dict]]  # the files -> documents with the stock data set's fields

    def label(self, name):
        return f"{name} ({self.variant})"


PAPER_TASKS = ("lambada_openai", "piqa", "arc_easy", "arc_challenge", "openbookqa", "boolq")  # Table 2, 0-shot
LOCAL_TASKS = {
    "lambada_openai": LocalTask("lambada", ("lambada/lambada_test.jsonl",), "test", "local OpenAI test file",
                                lambda paths: _jsonl(paths[0])),
    "piqa": LocalTask("piqa", ("piqa/valid.jsonl", "piqa/valid-labels.lst"), "validation",
                      "local validation files", _piqa_docs),
    "arc_easy": LocalTask("arc", ("llm-foundry-icl/arc_easy.jsonl",), "test", "llm-foundry 4-choice copy",
                          _converted(arc_doc)),
    "arc_challenge": LocalTask("arc", ("llm-foundry-icl/arc_challenge.jsonl",), "test", "llm-foundry 4-choice copy",
                               _converted(arc_doc)),
    "openbookqa": LocalTask("openbookqa", ("llm-foundry-icl/openbook_qa.jsonl",), "test", "llm-foundry copy",
                            _converted(openbookqa_doc)),
    "boolq": LocalTask("super_glue/boolq", ("llm-foundry-icl/boolq.jsonl",), "validation",
                       "llm-foundry copy, passages without page titles", _converted(boolq_doc)),
}


def local_tasks(names, data_dir) -> dict[str, LocalTask]:
    """The tasks among names that run from the data folder: a local definition and all its files there."""
    if data_dir is None:
        return {}
    return {name: LOCAL_TASKS[name] for name in names
            if name in LOCAL_TASKS and all((pathlib.Path(data_dir) / f).is_file() for f in LOCAL_TASKS[name].files)}


def describe_task_data(names, data_dir) -> list[dict]:
    """Each task's data for a run record: local files by path inside the data folder and sha256, or the hub."""
    from .base import file_sha256

    local = local_tasks(names, data_dir)
    out = []
    for name in names:
        if name in local:
            out += [{"task": name, "file": f, "sha256": file_sha256(pathlib.Path(data_dir) / f)}
                    for f in local[name].files]
        else:
            out.append({"task": name, "hub": "stock task"})
    return out


def _stock_tasks_root() -> pathlib.Path:
    import lm_eval.tasks

    return pathlib.Path(lm_eval.tasks.__file__).parent


@functools.cache
def _task_manager(folder: str | None = None):
    """lm-eval's task index: of the stock tasks in one folder, or of all (folder None: slow, hence cached)."""
    from lm_eval.tasks import TaskManager

    if folder is None:
        return TaskManager()
    return TaskManager(include_path=_stock_tasks_root() / folder, include_defaults=False)


def stock_entry(name, folder=None):
    """The installed stock definition of a task (its YAML path and config), from one folder or the whole index."""
    index = _task_manager(folder).task_index
    if name not in index:
        raise TaskError(f"unknown lm-evaluation-harness task '{name}'")
    return index[name]


def _dataset(split, docs, **_harness_metadata):
    import datasets

    return datasets.DatasetDict({split: datasets.Dataset.from_list(docs)})


@dataclass(frozen=True)
class PlannedTask:
    name: str  # as asked on the command line
    spec: str | dict  # what simple_evaluate gets: a stock name, or a local task's config
    label: str
    source: dict | None  # None for stock tasks: the harness reports their data set

    @property
    def harness_name(self):
        return self.spec["task"] if isinstance(self.spec, dict) else self.spec


def local_config(name, data_dir) -> tuple[dict, dict]:
    """The harness config of a local task and a description of its source: the stock config, data from the files."""
    task = LOCAL_TASKS[name]
    entry = stock_entry(name, task.stock_folder)
    paths = [pathlib.Path(data_dir) / f for f in task.files]
    try:
        docs = task.read(paths)
    except (OSError, ValueError, KeyError, IndexError) as e:
        raise TaskError(f"{name}: cannot read {', '.join(map(str, paths))}: {type(e).__name__}: {e}") from None
    config = copy.deepcopy(entry.cfg)
    config.update(task=f"{name}_local", dataset_path=str(paths[0]), dataset_name=None, dataset_kwargs=None,
                  custom_dataset=functools.partial(_dataset, task.split, docs), training_split=None,
                  validation_split=None, test_split=None, fewshot_split=None, fewshot_config=None)
    config[f"{task.split}_split"] = task.split
    source = {"kind": "local", "files": list(task.files), "split": task.split, "note": task.variant,
              "stock_config": str(entry.yaml_path.relative_to(_stock_tasks_root()))}
    return config, source


def plan_tasks(names, data_dir, num_fewshot=0) -> tuple[list[PlannedTask], object]:
    """What the harness runs for each name, and the task manager that resolves them. Raises TaskError for an unknown
    name, an unreadable local file, few-shot examples a local file cannot give, or stock tasks whose data cannot be
    reached, so calling it early fails before any model work."""
    local = local_tasks(names, data_dir)
    if local and num_fewshot:
        raise TaskError("{num_fewshot} {n}: the local files of {names} hold only the evaluated split, not the training "
                        "split the stock tasks draw examples from; use 0", option="num_fewshot", n=num_fewshot,
                        names=", ".join(local))
    planned = []
    for name in names:
        if name in local:
            config, source = local_config(name, data_dir)
            planned.append(PlannedTask(name, config, local[name].label(name), source))
        else:
            stock_entry(name)
            planned.append(PlannedTask(name, name, name, None))
    stock = [name for name in names if name not in local]
    if stock:
        _check_hub(stock, data_dir)
        return planned, _task_manager()
    from lm_eval.tasks import TaskManager

    return planned, TaskManager(include_defaults=False)  # local configs come whole: no index needed


def _check_hub(stock, data_dir):
    """Stock tasks download their data: refuse now when neither the hub nor its offline cache can serve it."""
    from .base import hub_offline, hub_reachable

    if hub_offline() or hub_reachable():
        return
    where = (f"{data_dir} has no files for {'them' if len(stock) > 1 else 'it'}" if data_dir
             else "no data folder is given")
    raise TaskError("{tasks} {stock}: the Hugging Face hub cannot be reached and {where}; {local} run offline from "
                    "{data_dir} (or RPTQ_DATA_DIR) laid out like shared/offline-data; HF_DATASETS_OFFLINE=1 uses the "
                    "datasets cache instead", option="tasks", stock=",".join(stock), where=where,
                    local=", ".join(LOCAL_TASKS))
