"""bench/sharpness.py: Hessian eigenvalue/trace against the dense Hessian, m-sharpness properties,
and `sambench sharpness` on real run folders (resume, skip, nothing else in result.json touched)."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

import masks
from bench import config, io, rundir
from bench.cli.app import main
from bench.engine import sharpness_runs, train
from bench.measure import sharpness as S
from bench.orchestration import runner


class ConvBN(nn.Module):
    """conv (no bias) -> BatchNorm -> ReLU -> mean pool -> linear: 18 + 4 + 9 = 31 parameters."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = ConvBN()
    x, y = torch.randn(32, 1, 5, 5), torch.randint(0, 3, (32,))
    model.train()
    with torch.no_grad():  # running statistics that are not the defaults
        for _ in range(3):
            model(x + 0.3)
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(-0.2, 0.2)
    return model.eval(), x, y


def dense_hessian(model, x, y):
    """The Hessian of the mean cross-entropy w.r.t. all parameters (flattened, in order)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    buffers = dict(model.named_buffers())

    def loss(theta):
        params, i = {}, 0
        for n, shape in zip(names, shapes):
            k = math.prod(shape)
            params[n] = theta[i:i + k].view(shape)
            i += k
        return nn.functional.cross_entropy(functional_call(model, {**params, **buffers}, (x,)), y)

    h = torch.autograd.functional.hessian(loss, flat)
    index, i = {}, 0
    for n, shape in zip(names, shapes):
        index[n] = list(range(i, i + math.prod(shape)))
        i += math.prod(shape)
    return h, index


def test_hessian_eigenvalue_and_trace_match_the_dense_hessian(tiny):
    model, x, y = tiny
    h, index = dense_hessian(model, x, y)
    norm = [i for n in masks.norm_param_names(model) for i in index[n]]
    assert len(norm) == 4 and h.shape == (31, 31)
    h_norm = h[norm][:, norm]
    # Hutch++ with 3 x 31 products is exact here: this checks the Hessian-vector products
    settings = {"radii": {}, "power_iters": 300, "power_tol": 1e-7, "trace_probes": 93, "batch_size": 12}
    out = S.measure(model, x, y, settings)["values"]   # batches of 12: sums over 3 batches
    assert out["hessian_max_eig"] == pytest.approx(float(torch.linalg.eigvalsh(h).max()), rel=0.01)
    assert out["hessian_trace"] == pytest.approx(float(h.trace()), rel=0.01)
    assert out["hessian_max_eig_norm"] == pytest.approx(float(torch.linalg.eigvalsh(h_norm).max()), rel=0.01)
    assert out["hessian_trace_norm"] == pytest.approx(float(h_norm.trace()), rel=0.01)
    # the dense Hessian here is indefinite: the largest eigenvalue is not the largest in magnitude
    # of every block, so the test would catch a sign error in the Rayleigh quotient
    assert float(torch.linalg.eigvalsh(h).min()) < 0


def test_hessian_through_fused_attention_and_layernorm():
    """timm's ViT uses scaled_dot_product_attention, whose fused kernels have no double backward."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    # the smallest ViT with the same blocks (timm's Attention calls scaled_dot_product_attention)
    model = VisionTransformer(img_size=8, patch_size=4, in_chans=1, num_classes=10, embed_dim=8, depth=1,
                              num_heads=2, mlp_ratio=2.0).eval()
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    names = masks.norm_param_names(model)
    params = dict(model.named_parameters())
    assert names and all(n.split(".")[-1] in ("weight", "bias") for n in names)
    flat = torch.cat([params[n].detach().reshape(-1) for n in names])
    rest = {n: p.detach() for n, p in params.items() if n not in names}

    def loss(theta):
        own, i = {}, 0
        for n in names:
            own[n] = theta[i:i + params[n].numel()].view(params[n].shape)
            i += params[n].numel()
        return nn.functional.cross_entropy(functional_call(model, {**rest, **own}, (x,)), y)

    with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
        h = torch.autograd.functional.hessian(loss, flat)
    # the trace estimators are checked against the dense Hessian above; here few probes suffice
    out = S.measure(model, x, y, {"power_iters": 300, "power_tol": 1e-7, "trace_probes": 6,
                                  "hessian": True, "radii": {"linf_adaptive": [0.003]}, "m": 8})["values"]
    assert out["hessian_max_eig_norm"] == pytest.approx(float(torch.linalg.eigvalsh(h).max()), rel=0.01)
    assert math.isfinite(out["hessian_trace_norm"]) and math.isfinite(out["hessian_trace"])
    assert out["msharp_linf_adaptive_rho0.003"] > 0


def test_estimators_on_matrices_with_known_answers():
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g))
    eig = torch.tensor([-9.0, 4.0, 3.0, 2.5] + [0.1 * i for i in range(8)])
    a = q @ torch.diag(eig) @ q.T
    like = [torch.zeros(12)]
    hvp = lambda v: [a @ v[0]]
    # the dominant eigenvalue (-9) is negative: the answer must still be the largest, 4
    top = S.top_eigenvalue(hvp, like, iters=2000, tol=1e-12, seed=0)
    assert top["value"] == pytest.approx(4.0, rel=1e-4)
    # Hutchinson: exact for a diagonal matrix (vᵀDv = tr D for ±1 entries) ...
    d = torch.diag(eig)
    assert S.hutchinson_trace(lambda v: [d @ v[0]], like, 3, 0)["value"] == pytest.approx(float(eig.sum()))
    # ... and unbiased with a correct standard error otherwise
    est = S.hutchinson_trace(hvp, like, 400, 0)
    assert abs(est["value"] - float(eig.sum())) < 4 * est["stderr"]
    # Hutch++ is exact once its sketch spans the space (3 x 12 products), close with fewer
    assert S.hutchpp_trace(hvp, like, 36, 0)["value"] == pytest.approx(float(eig.sum()), rel=1e-5)
    fewer = S.hutchpp_trace(hvp, like, 18, 0)
    assert abs(fewer["value"] - float(eig.sum())) < abs(est["value"] - float(eig.sum())) + 0.5


@pytest.mark.parametrize("family,radii", [
    ("l2_standard", [0.0, 0.05, 0.2, 0.5]), ("l2_adaptive", [0.0, 0.05, 0.2, 0.5]),
    ("linf_standard", [0.0, 0.005, 0.02, 0.05]), ("linf_adaptive", [0.0, 0.01, 0.05, 0.2]),
])
def test_sharpness_is_zero_at_radius_zero_and_grows_with_it(tiny, family, radii):
    model, x, y = tiny
    values = [S.worst_case_sharpness(model, x, y, family=family, rho=r, m=16, steps=8) for r in radii]
    assert values[0] == 0.0
    assert all(b > a for a, b in zip(values, values[1:])), values


def rescaled(model, c=3.0):
    """conv weight x c; BatchNorm's running mean x c and variance x c²: the same function."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.conv.weight.mul_(c)
        other.bn.running_mean.mul_(c)
        other.bn.running_var.mul_(c * c)
    return other


@pytest.mark.parametrize("norm,rho", [("l2", 0.3), ("linf", 0.05)])
def test_adaptive_sharpness_is_invariant_to_the_batchnorm_rescaling(tiny, norm, rho):
    model, x, y = tiny
    other = rescaled(model)
    assert torch.allclose(model(x), other(x), atol=1e-4)                 # the function is unchanged
    assert not torch.allclose(model.conv.weight, other.conv.weight)
    kw = dict(m=16, steps=10)
    adaptive = [S.worst_case_sharpness(m, x, y, family=f"{norm}_adaptive", rho=rho, **kw) for m in (model, other)]
    standard = [S.worst_case_sharpness(m, x, y, family=f"{norm}_standard", rho=rho / 10, **kw)
                for m in (model, other)]
    assert adaptive[0] > 0 and adaptive[1] == pytest.approx(adaptive[0], rel=0.01)
    # standard sharpness sees a flatter conv layer (a perturbation of 3w is a third as large
    # relative to it): it drops, by well more than the adaptive measure's 1% tolerance
    assert standard[1] < 0.98 * standard[0], standard


def test_measures_leave_the_model_untouched(tiny):
    model, x, y = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    S.measure(model, x, y, {"power_iters": 3, "trace_probes": 3, "steps": 2, "m": 16,
                            "radii": {"linf_adaptive": [0.01], "l2_standard": [0.1]}})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_logit_normalization():
    z = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
    n = S.logit_normalized(z)
    assert torch.allclose(n.sum(1), torch.zeros(2), atol=1e-6)
    assert torch.allclose(n.norm(dim=1), torch.ones(2))
    assert torch.allclose(S.logit_normalized(5 * z + 7), n, atol=1e-6)   # scale and shift invariant


def test_settings_validation_and_keys():
    assert S.resolve_settings(None)["n_samples"] == 1024
    s = S.resolve_settings({"radii": {"linf_adaptive": [0.003, 0.001]}, "m": 64})
    assert s["radii"] == {"linf_adaptive": [0.001, 0.003]} and s["m"] == 64
    assert S.measure_keys(s) == list(S.HESSIAN_KEYS) + ["msharp_linf_adaptive_rho0.001",
                                                         "msharp_linf_adaptive_rho0.003"]
    assert S.measure_keys({**s, "trace_probes": 0}) == ["hessian_max_eig", "hessian_max_eig_norm",
                                                        "msharp_linf_adaptive_rho0.001",
                                                        "msharp_linf_adaptive_rho0.003"]
    for bad, field in (({"bogus": 1}, ".bogus"), ({"m": 0}, ".m"), ({"radii": {"l3_x": [1]}}, ".radii.l3_x"),
                       ({"radii": {"l2_standard": [-1]}}, ".radii.l2_standard"), ("yes", ""),
                       ({"trace_estimator": "exact"}, ".trace_estimator")):
        with pytest.raises(S.SettingsError) as info:
            S.check_settings(bad)
        assert info.value.field == field
    # in a run config: a runtime field (not in the run id), checked with its path
    cfg = config.resolve({"dataset": "digits", "model": "resnet_ci"})
    assert config.run_id({**cfg, "sharpness": {"m": 32}}) == config.run_id(cfg)
    with pytest.raises(config.ConfigError, match="sharpness.m"):
        config.resolve({"sharpness": {"m": -1}})


# --- run folders and the command -------------------------------------------------------------------

FAST = {"n_samples": 64, "m": 32, "steps": 2, "power_iters": 3, "trace_probes": 3,
        "radii": {"linf_adaptive": [0.003], "l2_standard": [0.1]}}


def _train(tmp_path, **over):
    cfg = {"dataset": "digits", "model": "resnet_ci", "epochs": 1, "batch_size": 256, "device": "cpu",
           "mask": "norm_only", "rho": 0.5, **over}
    out = tmp_path / "run"
    train.run(cfg, out, progress=False, log=lambda m: None)
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("sharp"))


def _sets(settings: dict) -> list[str]:
    return [a for k, v in settings.items() for a in ("--set", f"{k}={json.dumps(v)}")]


def test_command_writes_sharpness_and_keeps_the_rest(finished, tmp_path, capsys):
    run = tmp_path / "copy"
    run.mkdir()
    for f in finished.iterdir():
        if f.is_file():
            (run / f.name).write_bytes(f.read_bytes())
    before = io.read_json(run / "result.json")
    assert main(["sharpness", str(run), "--device", "cpu", "--samples", "64"] + _sets(FAST)) == 0
    after = io.read_json(run / "result.json")
    block = after.pop("sharpness")
    assert after == before                                    # nothing else changed
    keys = S.measure_keys(S.resolve_settings(FAST))
    assert set(keys) <= set(block) and set(keys) == set(block["time_s"])
    assert {"hessian_max_eig", "hessian_trace", "hessian_max_eig_norm", "hessian_trace_norm",
            "msharp_linf_adaptive_rho0.003", "msharp_l2_standard_rho0.1"} <= set(block)
    assert all(isinstance(block[k], float) for k in keys) and block["hessian_max_eig"] > 0
    assert block["settings"]["n_samples"] == 64 and block["settings"]["n_used"] == 64
    assert block["settings"]["device"] == "cpu" and not (run / S.PARTIAL).exists()
    # again: skipped, the file untouched
    raw = (run / "result.json").read_bytes()
    assert main(["sharpness", str(run), "--samples", "64"] + _sets(FAST)) == 0
    assert "skipped" in capsys.readouterr().out and (run / "result.json").read_bytes() == raw
    # the numbers depend only on the checkpoint and the settings
    again = S.measure(*sharpness_runs.load_model_and_data(config.resolve(io.read_json(run / "config.json")["config"]),
                                              run, 64, torch.device("cpu"))[:3],
                      {**FAST, "hessian": False, "radii": {"l2_standard": [0.1]}})["values"]
    assert again["msharp_l2_standard_rho0.1"] == pytest.approx(block["msharp_l2_standard_rho0.1"], rel=1e-5)


def test_interrupted_measurement_resumes_and_never_corrupts_result(finished, tmp_path, monkeypatch):
    run = tmp_path / "copy"
    run.mkdir()
    for f in finished.iterdir():
        if f.is_file():
            (run / f.name).write_bytes(f.read_bytes())
    raw = (run / "result.json").read_bytes()
    real = S.worst_case_sharpness

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(S, "worst_case_sharpness", killed)
    with pytest.raises(KeyboardInterrupt):
        sharpness_runs.evaluate_dirs([str(run)], FAST, "cpu", log=lambda m: None)
    assert (run / "result.json").read_bytes() == raw        # untouched
    part = io.read_json(run / S.PARTIAL)
    assert set(part["values"]) == set(S.HESSIAN_KEYS)        # the Hessian measures were saved
    part["values"]["hessian_max_eig"] = 12345.0              # a marker: resumed, not recomputed
    io.write_json(run / S.PARTIAL, part)
    monkeypatch.setattr(S, "worst_case_sharpness", real)
    sharpness_runs.evaluate_dirs([str(run)], FAST, "cpu", log=lambda m: None)
    block = io.read_json(run / "result.json")["sharpness"]
    assert block["hessian_max_eig"] == 12345.0 and "msharp_l2_standard_rho0.1" in block
    assert not (run / S.PARTIAL).exists()


def test_bad_run_folders_exit_2_with_one_line(finished, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text((finished / "config.json").read_text())
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "result.json").write_text('{"status": "do')
    for bad, needle in ((tmp_path / "nope", "no such run folder"), (tmp_path / "empty", "no result.json"),
                        (unfinished, "not finished"), (broken, "unreadable")):
        assert main(["sharpness", str(finished), str(bad)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err
    assert main(["sharpness", str(finished), "--set", "radii={l3: [1]}"]) == 2
    assert "radii.l3" in capsys.readouterr().err
    assert "sharpness" not in io.read_json(finished / "result.json")   # nothing measured first


def test_suite_runs_ask_for_sharpness_after_training(tmp_path):
    run = _train(tmp_path, sharpness=FAST)
    result = io.read_json(run / "result.json")
    assert result["status"] == "done" and "msharp_linf_adaptive_rho0.003" in result["sharpness"]
    cfg = config.resolve(io.read_json(run / "config.json")["config"])
    def state(cfg):  # what `sambench run` plans for the run folder
        return runner._with_sharpness(rundir.run_state("x", cfg, run, lambda job: False)).state

    assert state(cfg) == "done"
    # the suite asks for other settings later: the finished run is resumed for them only
    more = {**cfg, "sharpness": {**FAST, "radii": {"l2_adaptive": [0.5]}}}
    assert S.pending(more, result) and state(more) == "resume"
    result = train.run(more, run, progress=False, log=lambda m: None)
    assert "msharp_l2_adaptive_rho0.5" in result["sharpness"] and result["epochs"] == 1
    assert state(more) == "done"
    # a failure is recorded beside the training result, which stays "done"
    broken = {**cfg, "sharpness": {**FAST, "m": 7}}
    original = sharpness_runs.compute_for_run
    try:
        sharpness_runs.compute_for_run = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom"))
        result = train.run(broken, run, progress=False, log=lambda m: None)
    finally:
        sharpness_runs.compute_for_run = original
    assert result["status"] == "done" and "boom" in result["sharpness_error"]
    assert not S.pending(broken, result) and state(broken) == "done"


def test_suite_end_to_end_with_sharpness_and_published_numbers(tmp_path, capsys):
    suite = tmp_path / "s.yaml"
    suite.write_text(
        "name: t\n"
        "defaults: {dataset: digits, model: resnet_ci, epochs: 1, batch_size: 512, device: cpu,\n"
        f"           sharpness: {json.dumps(FAST)}}}\n"
        "grid: {mask: norm_only, rho: 0.5}\n"
        "reference:\n"
        "  source: a hand-made paper\n"
        "  entries: [{mask: norm_only, mean: 99.5, std: 0.1}, {variant: none, mean: 90.0}]\n")
    out = tmp_path / "results"
    assert main(["run", str(suite), "--out", str(out), "--executor", "debug"]) == 0
    [run] = [d for d in (out / "t").iterdir() if d.is_dir() and not d.name.startswith(".")]
    result = io.read_json(run / "result.json")
    assert result["status"] == "done" and "hessian_trace_norm" in result["sharpness"]
    ref = io.read_json(out / "t" / "reference.json")
    assert ref["entries"][0]["match"] == {"dataset": "digits", "model": "resnet_ci", "label_noise": 0.0,
                                          "mask": "norm_only"}
    capsys.readouterr()
    assert main(["table", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| published |" in table and "99.50 ± 0.10 [1]" in table and "[1] published: a hand-made paper" in table
    assert "Published but not run here: variant=none: 90.00 [1]" in table
    assert main(["plot", str(out), "-o", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "sharpness_vs_accuracy.png").is_file()
