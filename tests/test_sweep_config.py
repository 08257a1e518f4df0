import pytest

from repsub.errors import UsageError
from repsub.sweep import load_config, parse_config
from repsub.sweep.plan import plan_data_shards, plan_unit_shards

BASE = {"model": "shallow_cnn", "out": "/tmp/x"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({**BASE, "modle": "x"}, "unknown key(s) modle; valid keys: model, out"),
        (
            {**BASE, "optimization": {"stpes": 3}},
            "unknown key(s) optimization.stpes; valid keys of optimization",
        ),
        ({**BASE, "optimization": {"steps": "many"}}, "optimization.steps': expected int, got 'many'"),
        ({**BASE, "optimization": {"steps": 0}}, "--steps must be at least 1"),
        ({**BASE, "model": "alexnet2"}, "unknown model 'alexnet2'; valid models: shallow_cnn, mlp, vgg16"),
        (
            {**BASE, "layers": ["conv1", "conv8"]},
            "unknown layer(s) conv8 for shallow_cnn; valid layers: conv1",
        ),
        ({**BASE, "methods": ["am", "xam"]}, "valid methods are am, iam"),
        ({**BASE, "workers": {"count": 0}}, "workers.count must be at least 1"),
        ({**BASE, "reduce": "median"}, "reduce 'median'; valid: mean, max, center"),
        (
            {**BASE, "selectivity": {"reduce": "max"}},
            "selectivity.reduce moved to the top-level key `reduce`",
        ),
        (
            {**BASE, "selectivity": {"precision": "fp16"}},
            "selectivity.precision 'fp16'; valid: auto, fp32, bf16",
        ),
        ({**BASE, "optimization": {"precision": "fp8"}}, "unknown precision 'fp8'; valid: auto, fp32, bf16"),
        ({**BASE, "optimization": {"own_term": "relu"}}, "unknown own-term 'relu'; valid: hybrid, post, pre"),
        ({"model": "shallow_cnn"}, "'out' is required"),
        ({**BASE, "device": "tpu"}, "device 'tpu'; valid: auto, cpu, cuda"),
        ({**BASE, "selectivity": {"band_sample": -1}}, "selectivity.band_sample must be at least 0, got -1"),
        ({**BASE, "selectivity": {"quantile_k": 4}}, "selectivity.quantile_k 4: the sketch needs k >= 8"),
        ({**BASE, "selectivity": {"bands": "yes"}}, "selectivity.bands': expected bool, got 'yes'"),
        (
            {**BASE, "selectivity": {"bands": True, "quantile_k": 0}},
            "selectivity.bands draws each unit's band edges from its quantiles: not with selectivity.quantile_k 0",
        ),
    ],
)
def test_bad_configs_are_refused_with_the_key_named(raw, message):
    with pytest.raises(UsageError) as err:
        parse_config(raw)
    assert message in str(err.value)


def test_yaml_file_and_out_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: mlp\nout: a\nlayers: fc2,fc3\noptimization: {lr: 1}\n")
    config = load_config(path, out="b")
    assert config.out == "b" and config.layers == ("fc2", "fc3") and config.optimization.lr == 1.0
    path.write_text("model: [unclosed\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_config(path)


def test_same_config_same_shards_and_fingerprint():
    raw = {**BASE, "layers": ["conv1", "fc6"], "sharding": {"units_per_shard": 24}}
    a, b = parse_config(raw), parse_config({**raw, "workers": {"count": 5}})
    assert a.fingerprint() == b.fingerprint()  # where work runs does not change what it computes
    assert a.fingerprint() != parse_config({**raw, "seed": 1}).fingerprint()
    shards = plan_unit_shards(a)
    assert shards == plan_unit_shards(b)
    assert [s.id for s in shards[:4]] == [
        "am-conv1-00000-00023",
        "am-conv1-00024-00047",
        "am-conv1-00048-00063",
        "am-fc6-00000-00009",
    ]
    assert sum(s.size for s in shards) == 2 * (64 + 10)
    data = plan_data_shards(23, 5)
    assert [(s.start, s.stop) for s in data] == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]


def test_shipped_job_configs_are_valid():
    from pathlib import Path

    configs = sorted(Path(__file__).parent.parent.joinpath("jobs", "configs").glob("*.yaml"))
    assert len(configs) >= 3
    for path in configs:
        config = load_config(path)
        assert plan_unit_shards(config)
