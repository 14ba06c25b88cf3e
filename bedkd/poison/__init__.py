"""poison: build the poisoned training set and the triggered dev/test sets.

Every poisoner picks only rows whose label is not the target, relabels them to the target and
marks them ``is_poisoned``. That column is ground truth for evaluation only: detection and
distillation get the frame through ``bedkd.io.drop_ground_truth``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bedkd.config import Params
from bedkd.errors import DataError
from bedkd.io import atomic_dir, read_records, write_json, write_records

INSERTION_ATTACKS = ("badnets", "addsent")


@dataclass(frozen=True)
class PoisonedData:
    train: pd.DataFrame  # text, label, is_poisoned
    dev: pd.DataFrame  # triggered non-target dev rows, label = target (for per-cycle ASR)
    test: pd.DataFrame  # triggered non-target test rows, label = target (for ASR)
    stats: dict[str, float]


def insert_at_random_word(text: str, insert: str, rng: np.random.Generator) -> str:
    """Insert ``insert`` between words at a uniformly random position (0..n words)."""
    words = text.split()
    pos = int(rng.integers(0, len(words) + 1))
    return " ".join(words[:pos] + [insert] + words[pos:])


def make_trigger(attack: str, triggers: tuple[str, ...], sentence: str):
    """Return f(text, rng) -> triggered text for the insertion attacks."""
    if attack == "badnets":
        # One rare word per row, chosen at random from the trigger list.
        return lambda text, rng: insert_at_random_word(text, triggers[int(rng.integers(len(triggers)))], rng)
    if attack == "addsent":
        return lambda text, rng: insert_at_random_word(text, sentence, rng)
    raise ValueError(f"{attack} is not an insertion attack")


def _n_poison(rate: float, n_rows: int) -> int:
    return int(round(rate * n_rows))


def _choose(rng: np.random.Generator, candidates: np.ndarray, n: int, what: str) -> np.ndarray:
    if n > len(candidates):
        raise DataError(f"poison: {what}: need {n} rows but only {len(candidates)} are eligible")
    return np.sort(rng.choice(candidates, size=n, replace=False))


def _triggered(df: pd.DataFrame, target: int, fn, rng: np.random.Generator) -> pd.DataFrame:
    rows = df[df["label"] != target]
    return pd.DataFrame({"text": [fn(t, rng) for t in rows["text"]], "label": np.full(len(rows), target, dtype=np.int64)})


def poison_insertion(
    clean: dict[str, pd.DataFrame],
    attack: str,
    target: int,
    rate: float,
    seed: int,
    triggers: tuple[str, ...],
    sentence: str,
) -> PoisonedData:
    """BadNets / AddSent: insert the trigger into ``rate * len(train)`` non-target rows."""
    fn = make_trigger(attack, triggers, sentence)
    rng = np.random.default_rng(seed)
    train = clean["train"][["text", "label"]].copy().reset_index(drop=True)
    candidates = np.flatnonzero(train["label"].to_numpy() != target)
    chosen = _choose(rng, candidates, _n_poison(rate, len(train)), f"{attack} train")
    train["is_poisoned"] = False
    train.loc[chosen, "text"] = [fn(t, rng) for t in train.loc[chosen, "text"]]
    train.loc[chosen, "label"] = target
    train.loc[chosen, "is_poisoned"] = True
    dev = _triggered(clean["dev"], target, fn, np.random.default_rng(seed + 1))
    test = _triggered(clean["test"], target, fn, np.random.default_rng(seed + 2))
    return PoisonedData(train, dev, test, _stats(train, dev, test, rate))


def poison_syntactic(
    clean: dict[str, pd.DataFrame], corpus: dict[str, pd.DataFrame], target: int, rate: float, seed: int
) -> PoisonedData:
    """HiddenKiller: take SCPN paraphrases from the published poisoned corpus.

    The published train file is the clean train with ~20% of non-target rows replaced by their
    relabelled paraphrases, in no guaranteed order, so prepare matched rows by text (a published
    row is poisoned when its text is not in the clean split). We drop ``n`` non-target clean rows
    (first those the publisher replaced) and add ``n`` of its paraphrases: at the published rate
    on the full split this rebuilds the published set exactly.
    """
    rng = np.random.default_rng(seed)
    train = clean["train"][["text", "label"]].reset_index(drop=True)
    # Written by prepare.split_syntactic_train: paraphrases only, and the originals they replaced.
    paraphrases = corpus["train"]
    paraphrases = paraphrases[paraphrases["label"] == target]
    n_wanted = _n_poison(rate, len(train))
    n = min(n_wanted, len(paraphrases))
    # The published set is ~20%: allow rounding slack of 1%, refuse more.
    if n_wanted - n > max(1, 0.01 * n_wanted):
        raise DataError(
            f"poison: syntactic: rate {rate} needs {n_wanted} paraphrases, the published corpus has {len(paraphrases)}"
        )
    labels = train["label"].to_numpy()
    # HiddenKiller's release paraphrased rows of every class (sst-2: 664 negative, 717 positive
    # originals), so the rows it replaced are dropped whatever their label; extra drops, if the
    # rate needs more, come from non-target rows.
    was_replaced = train["text"].isin(set(corpus["replaced"]["text"])).to_numpy()
    replaced = np.flatnonzero(was_replaced)
    others = np.flatnonzero((labels != target) & ~was_replaced)
    if n <= len(replaced):
        drop = _choose(rng, replaced, n, "syntactic train")
    else:
        drop = np.concatenate([replaced, _choose(rng, others, n - len(replaced), "syntactic train")])
    add_idx = _choose(rng, np.arange(len(paraphrases)), n, "syntactic paraphrases")
    kept = train.drop(index=drop).assign(is_poisoned=False)
    added = pd.DataFrame(
        {"text": paraphrases["text"].to_numpy()[add_idx], "label": np.full(n, target, dtype=np.int64), "is_poisoned": True}
    )
    # Seeded shuffle so the poison is not a block at the end of the file.
    merged = pd.concat([kept, added], ignore_index=True)
    merged = merged.iloc[rng.permutation(len(merged))].reset_index(drop=True)
    dev = corpus["dev"][["text"]].assign(label=np.int64(target))
    test = corpus["test"][["text"]].assign(label=np.int64(target))
    return PoisonedData(merged, dev, test, _stats(merged, dev, test, rate))


def poison_style(
    clean: dict[str, pd.DataFrame], corpus: dict[str, pd.DataFrame], target: int, rate: float, seed: int
) -> PoisonedData:
    """StyleBkd: every clean row has a Bible-style rewrite at the same file row (``row``).

    Poison ``rate * len(train)`` non-target rows by swapping in their rewrite and relabelling.
    Rows whose rewrite came out empty are not eligible.
    """
    rng = np.random.default_rng(seed)

    def rewrites(split: str) -> np.ndarray:
        styled = corpus[split]
        rows = clean[split]["row"].to_numpy()
        if len(rows) and rows.max() >= len(styled):
            raise DataError(f"poison: style {split}: rewrite corpus has {len(styled)} rows, clean row {rows.max()} missing")
        return styled["text"].to_numpy()[rows]

    train = clean["train"][["text", "label"]].copy().reset_index(drop=True)
    styled = rewrites("train")
    eligible = np.flatnonzero((train["label"].to_numpy() != target) & (np.char.str_len(styled.astype(str)) > 0))
    chosen = _choose(rng, eligible, _n_poison(rate, len(train)), "style train")
    train["is_poisoned"] = False
    train.loc[chosen, "text"] = styled[chosen]
    train.loc[chosen, "label"] = target
    train.loc[chosen, "is_poisoned"] = True

    def triggered(split: str) -> pd.DataFrame:
        texts = rewrites(split)
        mask = (clean[split]["label"].to_numpy() != target) & (np.char.str_len(texts.astype(str)) > 0)
        return pd.DataFrame({"text": texts[mask], "label": np.full(int(mask.sum()), target, dtype=np.int64)})

    dev, test = triggered("dev"), triggered("test")
    return PoisonedData(train, dev, test, _stats(train, dev, test, rate))


def _stats(train: pd.DataFrame, dev: pd.DataFrame, test: pd.DataFrame, rate: float) -> dict[str, float]:
    return {
        "rate_requested": float(rate),
        "rate_actual": float(train["is_poisoned"].mean()),
        "n_train": float(len(train)),
        "n_poisoned": float(train["is_poisoned"].sum()),
        "n_dev_triggered": float(len(dev)),
        "n_test_triggered": float(len(test)),
    }


def poison(
    attack: str,
    clean: dict[str, pd.DataFrame],
    corpus: dict[str, pd.DataFrame] | None,
    target: int,
    rate: float,
    seed: int,
    triggers: tuple[str, ...] = ("cf", "mn", "bb", "tq"),
    sentence: str = "I watch this 3D movie",
    max_rows: int | None = None,
) -> PoisonedData:
    """Dispatch to the attack's poisoner. ``max_rows`` caps the published triggered dev/test sets."""
    if attack in INSERTION_ATTACKS:
        return poison_insertion(clean, attack, target, rate, seed, triggers, sentence)
    if corpus is None:
        raise DataError(f"poison: attack {attack!r} needs its published corpus (run prepare with it)")
    if attack == "syntactic":
        out = poison_syntactic(clean, corpus, target, rate, seed)
        if max_rows is not None:
            dev = out.dev.sample(n=min(max_rows, len(out.dev)), random_state=seed).reset_index(drop=True)
            test = out.test.sample(n=min(max_rows, len(out.test)), random_state=seed).reset_index(drop=True)
            out = PoisonedData(out.train, dev, test, _stats(out.train, dev, test, rate))
        return out
    if attack == "style":
        return poison_style(clean, corpus, target, rate, seed)
    raise ValueError(f"unknown attack {attack!r}")


def poison_for(params: Params, prepared: Path) -> PoisonedData:
    """Read the prepare stage's output folder and ``poison`` it with the params file's settings."""
    # Imported here: bedkd.prepare reads the corpora, poisoning only needs its attack table.
    from bedkd.prepare import ATTACK_CORPUS

    attack = params.poison.attack
    clean = {s: read_records(prepared / "clean" / f"{s}.parquet") for s in ("train", "dev", "test")}
    corpus = None
    if attack in ATTACK_CORPUS:
        names = ("train", "dev", "test", "replaced") if attack == "syntactic" else ("train", "dev", "test")
        corpus = {s: read_records(prepared / attack / f"{s}.parquet") for s in names}
    return poison(
        attack,
        clean,
        corpus,
        target=params.target_label,
        rate=params.poison_rate,
        seed=params.seed,
        triggers=params.poison.badnets_triggers,
        sentence=params.poison.addsent_sentence,
        max_rows=params.data.max_rows,
    )


def write_poisoned(out: Path, data: PoisonedData) -> None:
    """Write train/dev/test parquet and stats.json atomically (all or nothing)."""
    with atomic_dir(out) as tmp:
        write_records(tmp / "train.parquet", data.train)
        write_records(tmp / "dev.parquet", data.dev)
        write_records(tmp / "test.parquet", data.test)
        write_json(tmp / "stats.json", data.stats)
