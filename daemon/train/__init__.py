"""Train: a training job (parent: child process, timeout, registration) and what runs inside it (dataset,
validation, fit), the query adapter, and the refit after a promotion."""

from daemon.train.child import choose_fusion, embedder_dataset, fit, precision_for, reranker_dataset
from daemon.train.dataset import Example, TrainingData, as_id_list, assemble, mine_negatives, select_pairs
from daemon.train.job import (TrainCancelled, TrainError, TrainJob, TrainResult, child_command, cold_start_skip,
                              run_job, start_path)
from daemon.train.refit import check_refit, refit
from daemon.train.validation import (EarlyStopping, ValidationPool, carve_validation, in_validation, interpolate,
                                     validation_position)

__all__ = ["TrainJob", "TrainResult", "TrainError", "TrainCancelled", "run_job", "child_command", "cold_start_skip",
           "start_path", "fit", "embedder_dataset", "reranker_dataset", "choose_fusion", "precision_for", "Example", "TrainingData",
           "select_pairs", "assemble", "mine_negatives", "as_id_list", "ValidationPool", "EarlyStopping", "interpolate", "in_validation",
           "validation_position", "carve_validation", "refit", "check_refit"]
