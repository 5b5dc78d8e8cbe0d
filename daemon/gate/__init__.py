"""Gate: score a candidate against what serves on held-out real traffic; promote only on evidence."""

from daemon.gate.decision import (Decision, choose_embedder, decide, gate, guard_tests, guard_veto, leaked_pairs,
                                  overrule, record, record_forced)
from daemon.gate.evaluate import EvalSet, Evaluator, eval_sets, summary
from daemon.gate.heldout import rebalance_heldout, retire_heldout
from daemon.gate.significance import PairedTest, paired_difference, queries_needed, sign_flip_test

__all__ = ["EvalSet", "eval_sets", "Evaluator", "summary", "PairedTest", "sign_flip_test", "paired_difference",
           "queries_needed", "Decision", "decide", "gate", "choose_embedder", "record", "record_forced", "overrule",
           "leaked_pairs", "guard_tests", "guard_veto", "rebalance_heldout", "retire_heldout"]
