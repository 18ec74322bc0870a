"""The denoiser, the schedule, the loss and the samplers, on tiny real models."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from engine.model.config import CONFIGS, ModelConfig, resolve_config
from engine.model.denoiser import Denoiser
from engine.model.diffusion import Schedule, Standardiser, diffusion_loss, sample
from engine.errors import InputError

TINY = CONFIGS["tiny"]
K, H, D = 4, TINY.history, 8


def _inputs(b: int, seed: int = 0, horizon: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    length = H + horizon
    return {
        "history": torch.rand(b, H, K, generator=g), "target": torch.rand(b, horizon, K, generator=g),
        "hours": torch.randint(0, 24, (b, length), generator=g), "days": torch.randint(0, 7, (b, length), generator=g),
        "env": torch.randn(b, length, D, generator=g), "profile": torch.rand(b, length, K, generator=g),
    }


def _randomised(config: ModelConfig) -> Denoiser:
    """A denoiser whose zero-initialised layers are given random weights (a 'trained' stand-in)."""
    torch.manual_seed(1)
    model = Denoiser(config, env_dim=D, n_services=K)
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.abs().sum():
                parameter.normal_(0, 0.2)
    return model.eval()


def test_schedule_ends_with_alpha_bar_close_to_zero():
    for config in (ModelConfig(), TINY, replace(TINY, schedule="linear")):
        alpha_bars = Schedule.from_config(config).alpha_bars
        assert alpha_bars[-1] < 1e-3 and (alpha_bars[1:] < alpha_bars[:-1]).all() and alpha_bars[0] > 0.99
        assert config.final_alpha_bar() == pytest.approx(float(alpha_bars[-1]), rel=1e-3)
    with pytest.raises(InputError, match="must end close to 0"):
        replace(TINY, beta_end=0.2).validate()


def test_a_fresh_denoiser_predicts_zero_noise_because_modulation_and_output_are_zero_initialised():
    model = Denoiser(TINY, env_dim=D, n_services=K)
    batch = _inputs(3)
    eps = model(batch["history"], batch["target"], torch.tensor([0, 5, 19]), batch["hours"], batch["days"], batch["env"])
    assert eps.shape == (3, 1, K) and torch.count_nonzero(eps) == 0


@pytest.mark.parametrize("name", ["lsdm", "no-2d-attention", "env-input", "csdi-like", "lsdm-no-condition"])
def test_history_cache_gives_exactly_the_full_pass(name):
    config = replace(CONFIGS[name], channels=16, heads=2, blocks=2, history=H, horizon=2)
    model = _randomised(config)
    batch = _inputs(3, horizon=2)
    paths = 4
    x_t = torch.randn(3 * paths, 2, K)
    t = torch.randint(0, config.diffusion_steps, (3 * paths,))
    rep = lambda v: v.repeat_interleave(paths, 0)  # noqa: E731
    with torch.no_grad():
        full = model(rep(batch["history"]), x_t, t, rep(batch["hours"]), rep(batch["days"]), rep(batch["env"]),
                     None, rep(batch["profile"]))
        cache = model.encode_history(batch["history"], batch["hours"], batch["days"], batch["env"], None,
                                     batch["profile"])
        fast = model.denoise_target(cache, x_t, t)
    assert torch.allclose(full, fast, atol=1e-5)


def test_ablations_are_configurations_of_the_same_code():
    no_2d = Denoiser(CONFIGS["no-2d-attention"], env_dim=D, n_services=K)
    assert all(block.service_attn is None for block in no_2d.blocks)
    assert all(block.service_attn is not None for block in Denoiser(CONFIGS["lsdm"], env_dim=D, n_services=K).blocks)
    # Without a condition the environment cannot change the prediction.
    model = _randomised(replace(CONFIGS["lsdm-no-condition"], channels=16, heads=2))
    batch = _inputs(2)
    t = torch.tensor([3, 7])
    with torch.no_grad():
        a = model(batch["history"], batch["target"], t, batch["hours"], batch["days"], batch["env"])
        b = model(batch["history"], batch["target"], t, batch["hours"], batch["days"], -batch["env"])
    assert torch.equal(a, b)
    with torch.no_grad():
        cond = _randomised(replace(CONFIGS["lsdm"], channels=16, heads=2))
        c = cond(batch["history"], batch["target"], t, batch["hours"], batch["days"], batch["env"])
        d = cond(batch["history"], batch["target"], t, batch["hours"], batch["days"], -batch["env"])
    assert not torch.allclose(c, d)


def test_loss_combines_mse_and_cosine_and_trains():
    torch.manual_seed(0)
    config = replace(TINY, l2=0.5)
    model = Denoiser(config, env_dim=D, n_services=K)
    schedule, standardiser = Schedule.from_config(config), Standardiser(0.5, 0.3)
    batch = _inputs(64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, config.diffusion_steps, (64,), generator=g)
    noise = torch.randn(64, 1, K, generator=g)
    keep = torch.ones(64, dtype=torch.bool)
    first = float(diffusion_loss(model, schedule, standardiser, batch, t=t, noise=noise, keep_env=keep).detach())
    for _ in range(60):
        loss = diffusion_loss(model, schedule, standardiser, batch, g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    last = float(diffusion_loss(model, schedule, standardiser, batch, t=t, noise=noise, keep_env=keep).detach())
    assert last < first
    plain = replace(config, l2=0.0)
    mse_only = float(diffusion_loss(Denoiser(plain, env_dim=D, n_services=K), schedule, standardiser, batch,
                                    t=t, noise=noise, keep_env=keep).detach())
    assert mse_only == pytest.approx(float(torch.mean(noise**2)), rel=1e-5)  # a fresh model predicts 0


@pytest.mark.parametrize("sampler,steps", [("ddpm", 0), ("ddim", 5)])
def test_sampling_loops_are_deterministic_for_a_seed_and_stay_in_the_data_range(sampler, steps):
    model = _randomised(TINY)
    schedule, standardiser = Schedule.from_config(TINY), Standardiser(0.3, 0.2)
    batch = _inputs(2)
    cache = model.encode_history(batch["history"], batch["hours"], batch["days"], batch["env"], None, batch["profile"])
    draws = [sample(model, schedule, standardiser, cache, 6, sampler=sampler, steps=steps,
                    generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert draws[0].shape == (12, 1, K) and torch.equal(draws[0], draws[1])
    assert (draws[0] >= 0).all() and (draws[0] <= 1.0 + 1e-5).all()
    other = sample(model, schedule, standardiser, cache, 6, sampler=sampler, steps=steps,
                   generator=torch.Generator().manual_seed(8))
    assert not torch.equal(draws[0], other)


def test_guidance_one_is_the_conditional_model_and_zero_the_unconditional_one():
    model = _randomised(TINY)
    schedule, standardiser = Schedule.from_config(TINY), Standardiser(0.3, 0.2)
    batch = _inputs(2)
    args = (batch["history"], batch["hours"], batch["days"], batch["env"])
    cond = model.encode_history(*args, None, batch["profile"])
    null = model.encode_history(*args, torch.zeros(2, dtype=torch.bool), batch["profile"])
    run = lambda cache, nc, g: sample(model, schedule, standardiser, cache, 3, sampler="ddim", steps=4,  # noqa: E731
                                      guidance=g, null_cache=nc, generator=torch.Generator().manual_seed(1))
    assert torch.equal(run(cond, null, 1.0), run(cond, None, 1.0))
    assert torch.allclose(run(cond, null, 0.0), run(null, None, 1.0), atol=1e-6)
    assert not torch.allclose(run(cond, null, 3.0), run(cond, None, 1.0))


def test_configurations_resolve_by_name_or_file_and_reject_bad_fields(tmp_path):
    name, config = resolve_config("csdi-like", epochs=3)
    assert name == "csdi-like" and config.epochs == 3 and config.condition == "none" and config.l2 == 0
    path = tmp_path / "mine.json"
    path.write_text('{"channels": 32, "heads": 4, "blocks": 1}')
    name, config = resolve_config(str(path))
    assert name == "mine" and config.channels == 32
    path.write_text('{"chanels": 32}')
    with pytest.raises(InputError, match="unknown key"):
        resolve_config(str(path))
    with pytest.raises(InputError, match="--config"):
        resolve_config("nope")
    with pytest.raises(InputError, match="field 'channels'"):
        resolve_config("lsdm", channels=30, heads=4)


# --- the linear prior (engine/model/prior.py) ---------------------------------------------------------------


def test_the_prior_fit_recovers_a_linear_mean_and_sees_the_environment_only_when_conditioned():
    from engine.model.prior import N_COMMON, MeanPrior, PriorFit

    torch.manual_seed(0)
    conditioned, plain = MeanPrior(K, D, uses_env=True), MeanPrior(K, D, uses_env=False)
    assert plain.n_features == N_COMMON and conditioned.n_features > N_COMMON
    cells = torch.randn(30, D).numpy()
    conditioned.set_env_axes(cells)
    batch = _inputs(4000, seed=3)
    h = H
    args = (batch["history"], batch["profile"][:, h:], batch["env"][:, h:], batch["hours"][:, h:], batch["days"][:, h:])
    # A target that is a known linear function of the features (plus a little noise) is recovered.
    truth = torch.randn(K, conditioned.n_features) * 0.1
    target = (conditioned.features(*args) * truth).sum(-1) + 0.01 * torch.randn(4000, 1, K)
    fit = PriorFit(conditioned)
    for start in (0, 2000):  # the normal equations add up over batches
        fit.add(*(a[start : start + 2000] for a in args), target[start : start + 2000])
    fit.solve()
    assert torch.allclose(conditioned(*args), target, atol=0.05)
    # The environment changes the conditioned prior's mean, never the plain one's.
    plain.weight.normal_()
    moved = (args[0], args[1], -args[2], args[3], args[4])
    assert torch.equal(plain(*args), plain(*moved))
    assert not torch.allclose(conditioned(*args), conditioned(*moved))


@pytest.mark.parametrize("sampler,steps", [("ddpm", 0), ("ddim", 5)])
def test_sampling_around_a_prior_is_sampling_the_residual_and_keeps_the_data_range(sampler, steps):
    config = replace(TINY, prior="linear")
    model = _randomised(config)
    schedule = Schedule.from_config(config)
    batch = _inputs(3)
    cache = model.encode_history(batch["history"], batch["hours"], batch["days"], batch["env"], None, batch["profile"])

    def draw(standardiser, offset=None):  # noqa: ANN001, ANN202
        return sample(model, schedule, standardiser, cache, 8, sampler=sampler, steps=steps, offset=offset,
                      generator=torch.Generator().manual_seed(1))

    # A constant prior mean c around a residual of mean m is the same as no prior and mean m + c, the clip
    # range included: the offset shifts the samples and their bounds alike.
    shifted = draw(Standardiser(0.1, 0.2), torch.full((24, 1, K), 0.3))
    assert torch.allclose(shifted, draw(Standardiser(0.4, 0.2)), atol=1e-5)
    # A per-sample prior keeps every sample within the data range [0, 1].
    offset = torch.tensor([0.0, 0.5, 0.97]).view(3, 1, 1).expand(3, 1, K).repeat_interleave(8, 0)
    draws = draw(Standardiser(0.0, 0.3), offset)
    assert draws.shape == (24, 1, K) and (draws >= 0).all() and (draws <= 1 + 1e-5).all()


def test_a_prior_model_trains_on_the_residual_and_its_buffers_are_part_of_the_weights():
    config = replace(TINY, prior="linear")
    model = Denoiser(config, env_dim=D, n_services=K)
    assert {"prior.weight", "prior.env_mean", "prior.env_axes"} <= set(model.state_dict())
    assert "prior.weight" not in dict(model.named_parameters())  # fitted in closed form, not by the optimiser
    batch = _inputs(16)
    with torch.no_grad():
        model.prior.weight.fill_(0.01)
        g = model.prior_mean(batch["history"], batch["profile"], batch["env"], batch["hours"], batch["days"])
    schedule, standardiser = Schedule.from_config(config), Standardiser(0.0, 0.2)
    gen = torch.Generator().manual_seed(0)
    t, noise = torch.randint(0, config.diffusion_steps, (16,), generator=gen), torch.randn(16, 1, K, generator=gen)
    keep = torch.ones(16, dtype=torch.bool)
    loss = diffusion_loss(model, schedule, standardiser, batch, t=t, noise=noise, keep_env=keep)
    # The same loss as a prior-free model on the residual target (the cosine term on v both times).
    plain = Denoiser(replace(config, prior="none", l2=0.0), env_dim=D, n_services=K)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("prior.")})
    model_no_cos = Denoiser(replace(config, l2=0.0), env_dim=D, n_services=K)
    model_no_cos.load_state_dict(model.state_dict())
    residual = dict(batch, target=batch["target"] - g)
    with torch.no_grad():
        around = float(diffusion_loss(model_no_cos, schedule, standardiser, batch, t=t, noise=noise, keep_env=keep))
        direct = float(diffusion_loss(plain, schedule, standardiser, residual, t=t, noise=noise, keep_env=keep))
    assert around == pytest.approx(direct, rel=1e-5)
    assert torch.isfinite(loss)
