"""thinksafe export: parquet + dataset card whose numbers are the run's, the adapter with a model
card, and --push-to-hub against a local stand-in for HfApi (never the network)."""

from __future__ import annotations

import json

import pytest
import yaml
from viewer_run import make_run

from thinksafe.viewer.export import HubError, export_run, push


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    run = make_run(root / "run")
    return run, export_run(run, root / "out")


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_parquet_rows_are_the_sft_set(exported):
    import pyarrow.parquet as pq
    run, s = exported
    sft = [json.loads(line) for line in (run / "sft.jsonl").read_text().splitlines()]
    f = pq.ParquetFile(s["dataset"] / "data" / "train-00000-of-00001.parquet")
    t = f.read()
    assert t.num_rows == len(sft) == s["rows"]
    assert t.column("id").to_pylist() == [r["id"] for r in sft]
    assert t.column("response").to_pylist() == [r["response"] for r in sft]
    assert f.metadata.row_group(0).num_rows <= 256


def test_dataset_card_numbers_match_dataset_stats(exported):
    run, s = exported
    stats = json.loads((run / "dataset_stats.json").read_text())
    card = (s["dataset"] / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["annotations_creators"] == ["machine-generated"]
    assert meta["language"] == ["en"] and meta["license"] == "other" and "safety" in meta["tags"]
    assert meta["size_categories"] == ["n<1K"] and meta["source_datasets"] == ["thinksafe-organism"]
    assert meta["dataset_info"]["splits"][0]["num_examples"] == stats["kept"]
    assert meta["configs"][0]["data_files"][0]["path"] == "data/train-00000-of-00001.parquet"
    assert f"{stats['kept']} of {stats['total']} generated samples kept" in card
    for reason, n in stats["dropped"].items():
        assert f"| {reason} | {n} |" in card
    g = stats["by_group"]["harmful/S14"]
    assert f"| harmful/S14 | {g['total']} | {g['kept']} |" in card
    assert f"{stats['decontamination']['dropped']} samples dropped" in card
    assert "The following prompt is harmful." in card                      # the steering text
    assert "temperature 0.6" in card and "llama_guard" in card and "P(safe)" in card
    assert "| generate | 1.0 | cpu | 100 | 1e+09 |" in card                 # compute from the manifest


def test_adapter_card_numbers_match_train_and_summary(exported):
    run, s = exported
    t = json.loads((run / "train_summary.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    a = s["adapter"]
    assert (a / "adapter_config.json").is_file() and (a / "adapter_model.safetensors").is_file()
    assert not (a / "training_args.bin").exists()        # a pickle with local paths stays home
    card = (a / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["base_model"] == "organism" and meta["library_name"] == "peft"
    assert f"| train loss | {t['train_loss']} |" in card and f"| steps | {t['steps']} |" in card
    assert f"| examples | {t['examples']} |" in card
    for name, m in summary["models"].items():
        assert f"| {name} | {m['harmful_rate']:.3f} |" in card
    assert "Guard used as judge: `llama_guard` `organism-guard`" in card


def test_paper_table_flags_limits_and_partial_averages(tmp_path):
    from thinksafe.io import write_json
    from thinksafe.viewer.export import eval_rows
    write_json(tmp_path / "summary.json", {"models": {"trained": {"paper": {
        "HarmBench": 12.0, "XSTest": 3.0, "Safety avg": 7.5, "Safety avg of": ["HarmBench", "XSTest"]}}}})
    write_json(tmp_path / "eval" / "trained" / "metrics.json", {"benchmarks": {"harmbench": {"limit": 50}}})
    head, rows = eval_rows(tmp_path)
    assert head == ["model", "HarmBench", "XSTest", "Safety avg", "flags"]
    assert rows[0][:4] == ["trained", 12.0, 3.0, 7.5]
    assert "partial average" in rows[0][4] and "harmbench limit 50" in rows[0][4]


class FakeHub:
    """Stands in for huggingface_hub.HfApi: records the calls, uploads nothing."""

    def __init__(self, fail: Exception | None = None):
        self.calls, self.fail = [], fail

    def create_repo(self, repo_id, repo_type=None, private=None, exist_ok=False):
        if self.fail:
            raise self.fail
        self.calls.append(("create", repo_id, repo_type, private))

    def upload_folder(self, folder_path, repo_id, repo_type=None, commit_message=None):
        from pathlib import Path
        self.calls.append(("upload", repo_id, repo_type, sorted(p.name for p in Path(folder_path).rglob("*"))))
        return type("Info", (), {"commit_url": f"local://{repo_id}"})()


def test_push_to_hub_with_a_local_stand_in(exported):
    _, s = exported
    hub = FakeHub()
    lines = push(s, "me/thinksafe-demo", private=True, api=hub)
    assert hub.calls[0] == ("create", "me/thinksafe-demo", "dataset", True)
    assert hub.calls[1][:3] == ("upload", "me/thinksafe-demo", "dataset")
    assert "README.md" in hub.calls[1][3] and "train-00000-of-00001.parquet" in hub.calls[1][3]
    assert hub.calls[3][:3] == ("upload", "me/thinksafe-demo-adapter", "model")
    assert "adapter_config.json" in hub.calls[3][3]
    assert lines == ["pushed dataset me/thinksafe-demo: local://me/thinksafe-demo",
                     "pushed model me/thinksafe-demo-adapter: local://me/thinksafe-demo-adapter"]


def test_push_errors_are_one_line(exported):
    from types import SimpleNamespace

    from huggingface_hub.errors import HfHubHTTPError
    _, s = exported
    resp = SimpleNamespace(status_code=401, headers={}, request=None)     # what the error reads
    err = HfHubHTTPError("401 Unauthorized\nmore", response=resp)
    with pytest.raises(HubError, match=r"not authorised") as e:
        push(s, "me/x", api=FakeHub(fail=err))
    assert "\n" not in str(e.value)
    with pytest.raises(HubError, match=r"ConnectionError: no route") as e:
        push(s, "me/x", api=FakeHub(fail=ConnectionError("no route\nto host")))
    assert "\n" not in str(e.value)


def test_cli_export(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from thinksafe.cli import app
    run = make_run(tmp_path / "run")
    hub = FakeHub()
    monkeypatch.setattr("huggingface_hub.HfApi", lambda: hub)
    r = CliRunner().invoke(app, ["export", str(run), "--to", str(tmp_path / "o"), "--push-to-hub", "me/r"])
    assert r.exit_code == 0, r.output[-500:]
    assert (tmp_path / "o" / "dataset" / "README.md").is_file() and [c[1] for c in hub.calls][:2] == ["me/r", "me/r"]
    r = CliRunner().invoke(app, ["export", str(tmp_path / "missing"), "--to", str(tmp_path / "o2")])
    assert r.exit_code == 2
