"""Few-shot classification of your own CSV with a saved meta-learned init: adapt on its rows, predict new texts.

Each CSV row is one labelled example (columns text,label unless named); each label is a class, its rows its support
set. The learner is a saved encoder learner with a prototype head, e.g. ``train_protomaml/learner`` of a run of
``python -m experiments.clinc_intents``. Prints one ``label<TAB>text`` line per text.

    python examples/classify_csv.py my_intents.csv runs/clinc_intents/train_protomaml/learner --predict "wake me at 7"
    python examples/classify_csv.py my_intents.csv LEARNER_DIR --predict new_texts.txt   # one text a line
"""
from __future__ import annotations

import argparse
import csv
import os

import torch

import metalearn
from metalearn.tasks import Task


def support_task(path: str, text_column: str = "text", label_column: str = "label") -> Task:
    """The CSV as a classification support set: classes numbered in order of first appearance, named in label_names."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    missing = sorted({text_column, label_column} - set(rows[0] if rows else {}))
    if missing:
        raise SystemExit(f"{path}: no rows, or no column(s) {missing}; name them with --text-column/--label-column")
    names = list(dict.fromkeys(row[label_column] for row in rows))
    support = {"text": [row[text_column] for row in rows],
               "label": torch.tensor([names.index(row[label_column]) for row in rows])}
    return Task(support, support, "classification", task_id=os.path.basename(path), label_names=tuple(names))


def main(argv=None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", help="labelled examples, one a row")
    parser.add_argument("learner", help="a saved learner's folder (learner.save, metalearn.load)")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--predict", nargs="+", required=True, help="texts to classify, or one file of them")
    args = parser.parse_args(argv)
    texts = args.predict
    if len(texts) == 1 and os.path.isfile(texts[0]):
        with open(texts[0], encoding="utf-8") as f:
            texts = [line.strip() for line in f if line.strip()]
    task = support_task(args.csv, args.text_column, args.label_column)
    adapted = metalearn.load(args.learner).adapt(task)
    unused = torch.zeros(len(texts), dtype=torch.long)  # predict reads only the texts; the encoder wants a label column
    labels = [task.label_names[i] for i in adapted.predict({"text": texts, "label": unused}).tolist()]
    for text, label in zip(texts, labels):
        print(f"{label}\t{text}")
    return labels


if __name__ == "__main__":
    main()
