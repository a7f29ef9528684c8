"""The RPTQ method's orchestration: calibration statistics, clustering, reorder, the pipeline, evaluation."""
