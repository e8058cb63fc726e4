"""Where task data comes from: the local data root, table files, the Hub, and named readers.

Every source ends as a ``datasets.Dataset`` (one table) or, for instruction data, a mapping
``{task name: Dataset}``. Three kinds of source:

* a Hugging Face Hub id, through ``datasets.load_dataset`` (needs network or a warm HF cache);
* local ``json``/``jsonl``/``csv``/``tsv`` files, also through ``datasets.load_dataset``;
* a *named reader* for the shared-data layouts that are not plain tables (``READERS``):
  ``clinc150``, ``hwu64``, ``fewrel``, ``huffpost``, ``instruction_induction``, ``dialogsum``.

Relative paths resolve against the data root: ``$METALEARN_DATA_DIR`` if set, else the first
``shared/data`` folder found walking up from the current directory or from this package.
"""
from __future__ import annotations

import csv
import functools
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

__all__ = ["READERS", "data_dir", "instruction_annotations", "load_files", "load_hub", "read", "resolve"]

ENV_VAR = "METALEARN_DATA_DIR"
HWU64_FOLD = "CrossValidation/autoGeneFromRealAnno/autoGene_2018_03_22-13_01_25_169/CrossValidation/KFold_1"
HWU64_PARTS = {"trainset": "train", "testset/csv": "test"}  # folder -> official split


def data_dir() -> Path:
    """The local data root: ``$METALEARN_DATA_DIR`` or the nearest ``shared/data`` up the tree."""
    env = os.environ.get(ENV_VAR)
    if env:
        root = Path(env).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"{ENV_VAR}={env!r} is not a folder; point it at the folder holding the data sets")
        return root
    starts = [Path.cwd(), Path(__file__).resolve().parent]
    for start in starts:
        for folder in (start, *start.parents):
            if (folder / "shared" / "data").is_dir():
                return folder / "shared" / "data"
    raise FileNotFoundError(
        "no local data folder found: looked for shared/data above "
        f"{', '.join(str(s) for s in starts)}; set {ENV_VAR}=/path/to/data"
    )


def resolve(path: str | os.PathLike, root: Path | None = None) -> Path:
    """An absolute path, relative ones taken against the data root; must exist."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = (root or data_dir()) / p
    if not p.exists():
        raise FileNotFoundError(
            f"data not found at {p}; download it there or set {ENV_VAR} to the folder that holds it"
        )
    return p


def _require_nonempty(path: Path) -> None:
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(f"data file {path} is empty; give a file with a header and at least one row")


# ---------------------------------------------------------------- generic tables


def load_files(files: str | Sequence[str], format: str | None = None, delimiter: str | None = None,
               root: Path | None = None):
    """Load local json/jsonl/csv/tsv files as one ``datasets.Dataset``."""
    import datasets

    paths = [resolve(f, root) for f in ([files] if isinstance(files, (str, os.PathLike)) else files)]
    for p in paths:
        _require_nonempty(p)
    fmt = (format or paths[0].suffix.lstrip(".")).lower()
    kwargs: dict[str, Any] = {}
    if fmt in ("json", "jsonl"):
        builder = "json"
    elif fmt in ("csv", "tsv"):
        builder = "csv"
        kwargs["delimiter"] = delimiter or ("\t" if fmt == "tsv" else ",")
    else:
        raise ValueError(f"file format {fmt!r} of {paths[0]} is not supported; use json, jsonl, csv or tsv")
    try:
        ds = datasets.load_dataset(builder, data_files=[str(p) for p in paths], split="train", **kwargs)
    except ValueError as err:  # datasets' words for a file with a header and no rows
        if "corresponds to no data" not in str(err):
            raise
        ds = []
    if len(ds) == 0:
        raise ValueError(f"data file(s) {', '.join(map(str, paths))} hold no rows; give at least one row")
    return ds


def load_hub(path: str, name: str | None = None, split: str = "train", **kwargs: Any):
    """Load one split of a Hugging Face Hub data set (``datasets.load_dataset``)."""
    import datasets

    return datasets.load_dataset(path, name, split=split, **kwargs)


def _table(rows: Mapping[str, list]):
    import datasets

    return datasets.Dataset.from_dict(dict(rows))


# ---------------------------------------------------------------- named readers


@functools.lru_cache(maxsize=8)
def _read_json(path: Path) -> Any:
    _require_nonempty(path)
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_clinc150(root: Path, parts: Sequence[str] = ("train", "val", "test")):
    """CLINC150 ``data_full.json``: columns text, intent, domain, official_split (the ``oos`` rows are left out).

    ``official_split`` is the part of ``data_full.json`` a row comes from (``train``, ``val``, ``test``, or an
    ``oos_*`` part when asked for); rows keep the file's order, part after part.
    """
    base = resolve("clinc150/data", root)
    full = _read_json(base / "data_full.json")
    domain_of = {intent: d for d, intents in _read_json(base / "domains.json").items() for intent in intents}
    rows: dict[str, list] = {"text": [], "intent": [], "domain": [], "official_split": []}
    for part in parts:
        if part not in full:
            raise ValueError(f"clinc150 has no part {part!r}; choose from {sorted(full)}")
        for text, intent in full[part]:
            rows["text"].append(text)
            rows["intent"].append(intent)
            rows["domain"].append(domain_of.get(intent, "oos"))
            rows["official_split"].append(part)
    return _table(rows)


def read_hwu64(root: Path, parts: Sequence[str] = ("trainset", "testset/csv")):
    """HWU64 fold 1 per-intent CSVs: columns text (answer_from_anno), label (scenario_intent), scenario,
    official_split.

    ``official_split`` is ``train`` for ``trainset/`` rows and ``test`` for ``testset/csv/`` rows (another part
    keeps its folder name). HWU64 has no official validation split.
    """
    base = resolve(f"hwu64/{HWU64_FOLD}", root)
    rows: dict[str, list] = {"text": [], "label": [], "scenario": [], "official_split": []}
    for part in parts:
        official = HWU64_PARTS.get(part.strip("/"), part)
        files = sorted(resolve(base / part).glob("*.csv"))
        for file in files:
            _require_nonempty(file)
            with open(file, encoding="utf-8", newline="") as f:
                for rec in csv.DictReader(f, delimiter=";"):
                    text = (rec.get("answer_from_anno") or "").strip()
                    if text:
                        rows["text"].append(text)
                        rows["label"].append(f"{rec['scenario']}_{rec['intent']}")
                        rows["scenario"].append(rec["scenario"])
                        rows["official_split"].append(official)
    return _table(rows)


def _mark(tokens: list[str], spans: list[tuple[list[int], str, str]]) -> str:
    out = list(tokens)
    for positions, open_, close in spans:
        out[positions[0]] = f"{open_} {out[positions[0]]}"
        out[positions[-1]] = f"{out[positions[-1]]} {close}"
    return " ".join(out)


def read_fewrel(root: Path, files: Sequence[str] = ("val_wiki.json",),
                markers: Sequence[str] = ("[E1]", "[/E1]", "[E2]", "[/E2]")):
    """FewRel ``{relation: [instances]}``: text with head/tail marked, relation (name), relation_id."""
    base = resolve("fewrel/data", root)
    names = _read_json(base / "pid2name.json")
    h_open, h_close, t_open, t_close = markers
    rows: dict[str, list] = {"text": [], "relation": [], "relation_id": []}
    for file in files:
        for rel, instances in _read_json(resolve(base / file)).items():
            name = names[rel][0] if rel in names else rel.replace("_", " ")
            for inst in instances:
                spans = [(inst["h"][2][0], h_open, h_close), (inst["t"][2][0], t_open, t_close)]
                rows["text"].append(_mark(inst["tokens"], spans))
                rows["relation"].append(name)
                rows["relation_id"].append(rel)
    return _table(rows)


def read_huffpost(root: Path, file: str = "huffpost.json"):
    """HuffPost headlines as split by Bao et al. 2020 (JSON lines ``{raw, label}``): columns text, label (0-40)."""
    path = resolve(f"huffpost/{file}", root)
    _require_nonempty(path)
    rows: dict[str, list] = {"text": [], "label": []}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                rows["text"].append(str(rec["raw"]))
                rows["label"].append(str(rec["label"]))
    return _table(rows)


def _ii_rows(task: str, examples: list[dict]) -> dict[str, list]:
    rows: dict[str, list] = {"input": [], "output": []}
    for i, ex in enumerate(examples):
        if task == "cause_and_effect":  # which of two sentences is the cause (order alternates)
            a, b = (ex["cause"], ex["effect"]) if i % 2 == 0 else (ex["effect"], ex["cause"])
            inp, out = f"Sentence 1: {a} Sentence 2: {b}", ex["cause"]
        elif task == "common_concept":
            inp, out = ", ".join(ex["items"]), ex["all_common_concepts"][0]
        else:
            inp, out = ex["input"], ex["output"]
        rows["input"].append(str(inp))
        rows["output"].append(str(out))
    return rows


def read_instruction_induction(root: Path, part: str = "induce", tasks: Sequence[str] | None = None) -> dict:
    """Instruction Induction ``raw/<part>/<task>.json``: ``{task: Dataset(input, output)}``.

    The human instructions (``annotations/<task>.json``) come from :func:`instruction_annotations`.
    """
    base = resolve(f"instruction_induction/data/raw/{part}", root)
    names = sorted(p.stem for p in base.glob("*.json")) if tasks is None else list(tasks)
    out = {}
    for name in names:
        data = _read_json(resolve(base / f"{name}.json"))
        out[name] = _table(_ii_rows(name, list(data["examples"].values())))
    return out


def instruction_annotations(root: Path) -> dict[str, list[str]]:
    """Human-written instructions per Instruction Induction task."""
    base = resolve("instruction_induction/data/annotations", root)
    return {p.stem: list(_read_json(p)["annotations"]) for p in sorted(base.glob("*.json"))}


def read_dialogsum(root: Path, files: Sequence[str] = ("dialogsum.dev.jsonl", "dialogsum.test.jsonl")) -> dict:
    """DialogSum jsonl: ``{"dialogsum": Dataset(input=dialogue, output=summary, topic)}``."""
    base = resolve("dialogsum/DialogSum_Data", root)
    rows: dict[str, list] = {"input": [], "output": [], "topic": []}
    for file in files:
        path = resolve(base / file)
        _require_nonempty(path)
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    rows["input"].append(rec["dialogue"])
                    rows["output"].append(rec.get("summary", rec.get("summary1")))
                    rows["topic"].append(rec.get("topic", rec.get("topic1")))
    return {"dialogsum": _table(rows)}


READERS: dict[str, Callable[..., Any]] = {
    "clinc150": read_clinc150,
    "dialogsum": read_dialogsum,
    "fewrel": read_fewrel,
    "huffpost": read_huffpost,
    "hwu64": read_hwu64,
    "instruction_induction": read_instruction_induction,
}


def read(reader: str, root: Path | None = None, **options: Any):
    """Run the named reader (see ``READERS``) on the data root."""
    if reader not in READERS:
        raise ValueError(f"unknown reader {reader!r}; choose from {sorted(READERS)} or give files/hub instead")
    return READERS[reader](root or data_dir(), **options)
