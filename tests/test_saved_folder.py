"""A saved learner: same seed, same bytes (any PYTHONHASHSEED); flipped bytes are caught by the sidecar's checksums."""
import json
import os
import subprocess
import sys

import pytest

import metalearn
from metalearn.build import build_learner
from metalearn.training import make_config
from tests.helpers import small_llama

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

SAVE_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from tests.test_saved_folder import save_seeded
save_seeded(sys.argv[1])
"""


def save_seeded(path):
    build_learner(make_config(lora_r=2, target_modules=TARGETS, prompt_tokens=2), small_llama()).save(path)


def folder_bytes(path):
    out = {}
    for root, _, names in os.walk(path):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                out[os.path.relpath(os.path.join(root, name), path)] = f.read()
    return out


def test_same_seed_gives_the_same_bytes_under_any_hash_seed(tmp_path):
    """This process and a subprocess with another PYTHONHASHSEED save the same learner: identical bytes."""
    here, there = str(tmp_path / "here"), str(tmp_path / "there")
    save_seeded(here)
    hash_seed = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", PYTHONHASHSEED=hash_seed)
    subprocess.run([sys.executable, "-c", SAVE_SCRIPT, there], cwd=ROOT, env=env, check=True, capture_output=True)
    a, b = folder_bytes(here), folder_bytes(there)
    assert set(a) >= {"adapter_config.json", "adapter_model.safetensors", "metalearn.json", "prompt/adapter_config.json"}
    assert set(a) == set(b)
    for name in a:
        assert a[name] == b[name], f"{name} differs between PYTHONHASHSEED values"
    assert json.loads(a["adapter_config.json"])["target_modules"] == sorted(TARGETS)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "init"
    build_learner(make_config(lora_r=2, target_modules=["q_proj"], prompt_tokens=2), small_llama()).save(str(path))
    return folder_bytes(path)


def restore(path, blobs):
    for rel, data in blobs.items():
        os.makedirs(os.path.dirname(os.path.join(path, rel)), exist_ok=True)
        with open(os.path.join(path, rel), "wb") as f:
            f.write(data)


@pytest.mark.parametrize("name", ["adapter_model.safetensors", "prompt/adapter_model.safetensors",
                                  "metalearn_state.safetensors", "adapter_config.json"])
def test_flipped_bytes_in_any_saved_file_are_detected(tmp_path, saved, name):
    path = str(tmp_path / "init")
    restore(path, saved)
    metalearn.load(path, model=small_llama())  # the intact copy loads
    data = bytearray(saved[name])
    data[-3] ^= 0x01  # one bit, inside the tensor values (or the JSON text)
    with open(os.path.join(path, name), "wb") as f:
        f.write(bytes(data))
    with pytest.raises(ValueError, match=rf"{name}' does not match the SHA-256 recorded in metalearn.json"):
        metalearn.load(path, model=small_llama())


def test_the_sidecar_records_a_checksum_of_every_file_a_load_reads(saved):
    import hashlib

    sums = json.loads(saved["metalearn.json"])["checksums"]
    assert set(sums) == {n for n in saved if n.endswith((".safetensors", ".json")) and n != "metalearn.json"}
    assert all(sums[n] == hashlib.sha256(saved[n]).hexdigest() for n in sums)
