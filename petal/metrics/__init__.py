"""Metrics equal to the reference scorers, one module per scorer.

* :mod:`~petal.metrics.vqa` — VQA accuracy exactly as GT-Vision-Lab/VQA's ``vqaEval.py`` (quirks
  included), plus exact match for single-answer data.
* :mod:`~petal.metrics.aokvqa` — A-OKVQA's direct-answer accuracy (allenai/aokvqa).
* :mod:`~petal.metrics.ptb` and :mod:`~petal.metrics.cider` — CIDEr-D after PTB tokenisation
  (pycocoevalcap; a Python tokenizer to the same rules without Java).
* :mod:`~petal.metrics.rouge` — ROUGE-1 / ROUGE-L in a stated variant (rouge-score, or the PETAL paper's).
* :mod:`~petal.metrics.scores` — a set of records, each scored by the metric it names.

All scores are fractions (papers print 100x).
"""

from .aokvqa import aokvqa_accuracy, aokvqa_score
from .cider import CiderResult, cider
from .ptb import TOKENIZERS, ptb_tokenize, python_ptb_tokenize
from .rouge import VARIANTS as ROUGE_VARIANTS
from .rouge import rouge
from .scores import METRICS, caption_scores, default_metric, task_scores, vqa_scores
from .vqa import exact_match, normalize_answer, vqa_accuracy

__all__ = ["METRICS", "ROUGE_VARIANTS", "TOKENIZERS", "CiderResult", "aokvqa_accuracy", "aokvqa_score",
           "caption_scores", "cider", "default_metric", "exact_match", "normalize_answer", "ptb_tokenize",
           "python_ptb_tokenize", "rouge", "task_scores", "vqa_accuracy", "vqa_scores"]
