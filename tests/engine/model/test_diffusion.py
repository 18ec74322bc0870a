"""The denoiser, the schedule, the loss and the samplers, on tiny real models."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from engine.errors import InputError
from engine.model.config import CONFIGS, ModelConfig, resolve_config
from engine.model.denoiser import Denoiser
from engine.model.diffusion import Schedule, Standardiser, diffusion_loss, sample

TINY = CONFIGS["tiny"]
K, H, D = 4, TINY.history, 8


def _inputs(b: int, seed: int = 0, horizon: int = 1) -> dict:
    """A batch as ``to_batch`` gives it; ``env`` is [the cell's embedding, the usual one] (2D wide), what a model
    with the environment profile reads (one without it reads the first D columns, or none)."""
    g = torch.Generator().manual_seed(seed)
    length = H + horizon
    return {
        "history": torch.rand(b, H, K, generator=g),
        "target": torch.rand(b, horizon, K, generator=g),
        "hours": torch.randint(0, 24, (b, length), generator=g),
        "days": torch.randint(0, 7, (b, length), generator=g),
        "env": torch.randn(b, length, 2 * D, generator=g),
        "profile": torch.rand(b, length, K, generator=g),
    }


def _randomised(config: ModelConfig) -> Denoiser:
    """A denoiser whose zero-initialised layers are given random weights (a 'trained' stand-in)."""
    torch.manual_seed(1)
    model = Denoiser(config, env_dim=D, n_services=K)
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.abs().sum():
                parameter.normal_(0, 0.2)
        if model.prior is not None:  # a fitted-looking linear mean
            for buffer in model.prior.buffers():
                buffer.normal_(0, 0.1)
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
    eps = model(
        batch["history"], batch["target"], torch.tensor([0, 5, 19]), batch["hours"], batch["days"], batch["env"]
    )
    assert eps.shape == (3, 1, K) and torch.count_nonzero(eps) == 0


@pytest.mark.parametrize(
    "name",
    [
        "lsdm",
        "no-2d-attention",
        "env-input",
        "csdi-like",
        "lsdm-no-condition",
        "lsdm-plain",
        "lsdm-prior",
        "lsdm-residual",
    ],
)
def test_history_cache_gives_exactly_the_full_pass(name):
    config = replace(CONFIGS[name], channels=16, heads=2, blocks=2, history=H, horizon=2)
    model = _randomised(config)
    batch = _inputs(3, horizon=2)
    paths = 4
    x_t = torch.randn(3 * paths, 2, K)
    t = torch.randint(0, config.diffusion_steps, (3 * paths,))

    def rep(v):
        return v.repeat_interleave(paths, 0)

    with torch.no_grad():
        full = model(
            rep(batch["history"]),
            x_t,
            t,
            rep(batch["hours"]),
            rep(batch["days"]),
            rep(batch["env"]),
            None,
            rep(batch["profile"]),
        )
        cache = model.encode_history(
            batch["history"], batch["hours"], batch["days"], batch["env"], None, batch["profile"]
        )
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
    mse_only = float(
        diffusion_loss(
            Denoiser(plain, env_dim=D, n_services=K), schedule, standardiser, batch, t=t, noise=noise, keep_env=keep
        ).detach()
    )
    assert mse_only == pytest.approx(float(torch.mean(noise**2)), rel=1e-5)  # a fresh model predicts 0


@pytest.mark.parametrize("sampler,steps", [("ddpm", 0), ("ddim", 5)])
def test_sampling_loops_are_deterministic_for_a_seed_and_every_sample_gets_its_own_noise(sampler, steps):
    """(That the samples stay in the data range is tests/engine/model/test_sampling_loop.py's: the x0 clip.)"""
    model = _randomised(TINY)
    schedule, standardiser = Schedule.from_config(TINY), Standardiser(0.3, 0.2)
    batch = _inputs(2)
    cache = model.encode_history(batch["history"], batch["hours"], batch["days"], batch["env"], None, batch["profile"])
    draws = [
        sample(
            model,
            schedule,
            standardiser,
            cache,
            6,
            sampler=sampler,
            steps=steps,
            generator=torch.Generator().manual_seed(7),
        )
        for _ in range(2)
    ]
    assert draws[0].shape == (12, 1, K) and torch.equal(draws[0], draws[1])
    per_window = draws[0].view(2, 6, K)
    # The noise reaches every sample (a window's samples spread) and the history every window (they differ).
    assert (per_window.std(1).mean(-1) > 0.1).all(), per_window.std(1)
    assert not torch.allclose(per_window[0].mean(0), per_window[1].mean(0), atol=1e-3)
    other = sample(
        model,
        schedule,
        standardiser,
        cache,
        6,
        sampler=sampler,
        steps=steps,
        generator=torch.Generator().manual_seed(8),
    )
    assert not torch.equal(draws[0], other)


def test_guidance_one_is_the_conditional_model_and_zero_the_unconditional_one():
    model = _randomised(TINY)
    schedule, standardiser = Schedule.from_config(TINY), Standardiser(0.3, 0.2)
    batch = _inputs(2)
    args = (batch["history"], batch["hours"], batch["days"], batch["env"])
    cond = model.encode_history(*args, None, batch["profile"])
    null = model.encode_history(*args, torch.zeros(2, dtype=torch.bool), batch["profile"])

    def run(cache, nc, g):
        return sample(
            model,
            schedule,
            standardiser,
            cache,
            3,
            sampler="ddim",
            steps=4,
            guidance=g,
            null_cache=nc,
            generator=torch.Generator().manual_seed(1),
        )

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
    with pytest.raises(InputError, match="field 'config'"):
        resolve_config("nope")
    with pytest.raises(InputError, match="field 'channels'"):
        resolve_config("lsdm", channels=30, heads=4)


@pytest.mark.parametrize(
    ("text", "field", "says"),
    [
        ('{"heads": 0}', "heads", "from 1 to 64, got 0"),  # was a ZeroDivisionError
        ('{"channels": "x"}', "channels", "a whole number, got 'x'"),  # was a TypeError
        ('{"batch_size": 0}', "batch_size", "from 1 to 65536, got 0"),
        ('{"epochs": Infinity}', "epochs", "a whole number, got inf"),
        ('{"blocks": -1}', "blocks", "from 1 to 64, got -1"),  # trained anyway
        ('{"channels": 1000000}', "channels", "from 2 to 2048"),  # an allocation traceback
        ('{"lr": NaN}', "lr", "a finite number"),
        ('{"service_attention": "yes"}', "service_attention", "true or false"),
        ("[1, 2]", None, "expected a JSON object of configuration fields"),  # was a TypeError
    ],
)
def test_a_configuration_file_with_a_bad_value_is_refused_naming_file_and_key(tmp_path, text, field, says):
    """Issue 20: `lsdm train --config FILE` crashed with ZeroDivisionError, TypeError or an allocation error, or
    trained with a negative number of blocks."""
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(InputError) as caught:
        resolve_config(str(path))
    assert caught.value.file == str(path) and caught.value.field == field and says in caught.value.message


# --- the linear prior (engine/model/prior.py) ---------------------------------------------------------------


def test_the_prior_fit_recovers_a_linear_mean_and_sees_the_environment_only_when_conditioned():
    from engine.model.prior import N_COMMON, N_GROUPS, MeanPrior, PriorFit

    torch.manual_seed(0)
    conditioned, plain = MeanPrior(K, D, uses_env=True), MeanPrior(K, D, uses_env=False)
    assert plain.n_features == N_COMMON + N_GROUPS and conditioned.n_features > plain.n_features
    assert MeanPrior(K, D, uses_env=False, period_intercepts=False).n_features == N_COMMON  # older checkpoints
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

    def draw(standardiser, offset=None):
        return sample(
            model,
            schedule,
            standardiser,
            cache,
            8,
            sampler=sampler,
            steps=steps,
            offset=offset,
            generator=torch.Generator().manual_seed(1),
        )

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


def test_paired_noise_negates_the_second_half_of_each_block_and_is_standard_normal():
    from engine.model.diffusion import paired_noise

    x = paired_noise((4 * 6, 1, K), torch.Generator().manual_seed(0), block=6)
    blocks = x.view(4, 6, 1, K)
    assert torch.equal(blocks[:, 3:], -blocks[:, :3])  # rows 3..5 mirror rows 0..2 of the same block
    assert not torch.equal(blocks[0, :3], blocks[1, :3])  # blocks do not share noise
    odd = paired_noise((2 * 5, 1, K), torch.Generator().manual_seed(0), block=5).view(2, 5, 1, K)
    assert torch.equal(odd[:, 3:], -odd[:, :2]) and not torch.equal(odd[:, 2], -odd[:, 2])  # the 5th is its own
    # Rows that do not divide into blocks, or block 1: independent noise, as torch.randn would draw it.
    plain = paired_noise((7, 1, K), torch.Generator().manual_seed(3), block=2)
    assert torch.equal(plain, torch.randn((7, 1, K), generator=torch.Generator().manual_seed(3)))
    big = paired_noise((20_000, 1, 2), torch.Generator().manual_seed(1), block=8)
    assert abs(float(big.mean())) < 0.02 and abs(float(big.std()) - 1) < 0.02  # every row is N(0, I)


def test_the_mean_of_antithetic_samples_is_steadier_than_that_of_independent_ones():
    """What antithetic pairs are for: across seeds, the mean of S paired samples of a window varies less
    than the mean of S independent ones (each sample having the same distribution either way)."""
    model = _randomised(TINY)
    schedule, standardiser = Schedule.from_config(TINY), Standardiser(0.3, 0.2)
    batch = _inputs(4)
    cache = model.encode_history(batch["history"], batch["hours"], batch["days"], batch["env"], None, batch["profile"])

    def means(antithetic: int) -> torch.Tensor:  # (seeds, windows, K): the 8-sample mean per seed
        return torch.stack(
            [
                sample(
                    model,
                    schedule,
                    standardiser,
                    cache,
                    8,
                    sampler="ddim",
                    steps=5,
                    generator=torch.Generator().manual_seed(s),
                    antithetic=antithetic,
                )
                .view(4, 8, K)
                .mean(1)
                for s in range(40)
            ]
        )

    paired, independent = means(8), means(0)
    assert float(paired.var(0).mean()) < 0.7 * float(independent.var(0).mean())
    # ... while the samples themselves keep their spread.

    def spread(a):
        return float(
            sample(
                model,
                schedule,
                standardiser,
                cache,
                64,
                sampler="ddim",
                steps=5,
                generator=torch.Generator().manual_seed(0),
                antithetic=a,
            )
            .view(4, 64, K)
            .std(1)
            .mean()
        )

    assert spread(64) == pytest.approx(spread(0), rel=0.25)


@pytest.mark.parametrize("name", ["lsdm", "csdi-like", "lsdm-prior"])
def test_several_noise_draws_per_window_equal_the_full_pass_on_repeated_windows(name):
    """``draws`` D encodes the history once and denoises D (step, noise) pairs: the same loss and the same
    gradients as the plain full pass over each window repeated D times."""
    config = replace(CONFIGS[name], channels=16, heads=2, blocks=2, history=H, l2=0.3, cond_dropout=0.0)
    draws, b = 3, 5
    batch = _inputs(b)
    g = torch.Generator().manual_seed(4)
    t = torch.randint(0, config.diffusion_steps, (b * draws,), generator=g)
    noise = torch.randn(b * draws, 1, K, generator=g)
    keep = torch.tensor([True, False, True, True, False])
    schedule, standardiser = Schedule.from_config(config), Standardiser(0.3, 0.2)

    def loss_and_grads(d: int, inputs: dict, keep_env: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
        model = _randomised(config)
        if model.prior is not None:  # a non-trivial prior mean
            model.prior.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
        model.train()
        loss = diffusion_loss(model, schedule, standardiser, inputs, t=t, noise=noise, keep_env=keep_env, draws=d)
        loss.backward()
        return float(loss.detach()), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    repeated = {k: v.repeat_interleave(draws, 0) for k, v in batch.items()}
    fast, fast_grads = loss_and_grads(draws, batch, keep)
    full, full_grads = loss_and_grads(1, repeated, keep.repeat_interleave(draws))
    assert fast == pytest.approx(full, rel=1e-5)
    assert len(fast_grads) == len(full_grads)
    for a, c in zip(fast_grads, full_grads, strict=True):
        assert torch.allclose(a, c, atol=1e-5, rtol=1e-4)


def test_checkpoints_saved_before_noise_draws_existed_read_as_one_draw():
    data = CONFIGS["lsdm"].to_dict()
    del data["noise_draws"]
    assert ModelConfig.from_dict(data).noise_draws == 1
    assert ModelConfig().noise_draws == 8
    with pytest.raises(InputError, match="noise_draws"):
        ModelConfig.from_dict({**data, "noise_draws": 0})


@pytest.mark.parametrize(
    ("prior", "is_input", "is_offset"),
    [("none", False, False), ("linear", False, True), ("feature", True, False), ("residual", True, True)],
)
def test_the_linear_mean_is_an_input_an_offset_or_both_as_configured(prior, is_input, is_offset):
    config = replace(CONFIGS["lsdm"], channels=16, heads=2, blocks=1, history=H, prior=prior)
    model = _randomised(config)
    batch = _inputs(3)
    t = torch.tensor([2, 9, 30])
    args = (batch["history"], batch["target"], t, batch["hours"], batch["days"], batch["env"], None, batch["profile"])
    with torch.no_grad():
        before = model(*args)
        offset = model.prior_mean(batch["history"], batch["profile"], batch["env"], batch["hours"], batch["days"])
        if model.prior is not None:
            model.prior.weight.add_(0.5)  # another linear mean
        after = model(*args)
        moved = model.prior_mean(batch["history"], batch["profile"], batch["env"], batch["hours"], batch["days"])
    assert (model.value_in.in_features == 4) == is_input
    assert (not torch.allclose(before, after)) == is_input  # the network sees the mean only as an input
    assert (offset is not None) == is_offset
    if is_offset:
        assert not torch.allclose(offset, moved)
    # Checkpoints from before the field existed have no linear mean at all.
    legacy = {k: v for k, v in config.to_dict().items() if k != "prior"}
    assert ModelConfig.from_dict(legacy).prior == "none"


@pytest.mark.parametrize("name", ["lsdm", "lsdm-no-condition", "env-input", "lsdm-residual"])
def test_loss_and_samplers_keep_every_tensor_on_the_models_device(name):
    """CUDA stand-in on a machine without a GPU: on the 'meta' device any tensor left on the CPU in a
    computation with the model's raises "not on the expected device", as it would on CUDA. The noise is
    drawn on the CPU from the seeded generator and moved, so CPU and CUDA draw the same numbers."""
    _, config = resolve_config(name, channels=16, heads=2, blocks=1)
    config = replace(config, history=H, cond_dropout=0.2)
    model = _randomised(config).to("meta")
    batch = {k: v.to("meta") for k, v in _inputs(4).items()}
    schedule, standardiser = Schedule.from_config(config), Standardiser(0.3, 0.2)
    generator = torch.Generator().manual_seed(0)
    model.train()  # condition dropout draws which windows keep the environment
    for draws in (1, 3):
        loss = diffusion_loss(model, schedule, standardiser, batch, generator, draws=draws)
        assert loss.device.type == "meta" and loss.shape == ()
    loss = diffusion_loss(
        model,
        schedule,
        standardiser,
        batch,
        t=torch.tensor([0, 3, 7, 9]),
        noise=torch.randn(4, 1, K),
        keep_env=torch.tensor([True, False, True, True]),
        draws=1,
    )
    assert loss.device.type == "meta"
    model.eval()
    args = (batch["history"], batch["hours"], batch["days"], batch["env"])
    cache = model.encode_history(*args, None, batch["profile"])
    null = model.encode_history(*args, torch.zeros(4, dtype=torch.bool, device="meta"), batch["profile"])
    offset = model.prior_mean(batch["history"], batch["profile"], batch["env"], batch["hours"], batch["days"])
    offset = None if offset is None else offset.repeat_interleave(2, 0)
    for sampler, steps in (("ddpm", 0), ("ddim", 4)):
        draws = sample(
            model,
            schedule,
            standardiser,
            cache,
            2,
            sampler=sampler,
            steps=steps,
            guidance=2.0,
            null_cache=null,
            generator=torch.Generator().manual_seed(1),
            offset=offset,
            antithetic=2,
        )
        assert draws.device.type == "meta" and draws.shape == (8, 1, K)


def test_the_no_condition_prior_has_the_conditioned_priors_period_intercepts_and_nothing_of_the_place():
    """The conditioned prior's environment block holds a constant column x one-hot(period): 8 intercepts that
    read no place. The no-condition prior has exactly those columns too, so that the condition's gain is the
    environment's, not the intercepts' (checkpoints that predate ``period_intercepts`` lack them)."""
    from engine.model.prior import ENV_AXES, N_COMMON, N_GROUPS, MeanPrior, period_group

    conditioned, plain = MeanPrior(K, D, uses_env=True), MeanPrior(K, D, uses_env=False)
    conditioned.set_env_axes(torch.randn(30, D).numpy())
    batch = _inputs(50, seed=5)
    args = (batch["history"], batch["profile"][:, H:], batch["env"][:, H:], batch["hours"][:, H:], batch["days"][:, H:])
    constant = N_COMMON + min(ENV_AXES, D) * N_GROUPS  # the constant column's block in the conditioned features
    with_env, without = conditioned.features(*args), plain.features(*args)
    assert torch.equal(without[..., :N_COMMON], with_env[..., :N_COMMON])
    assert torch.equal(without[..., N_COMMON:], with_env[..., constant : constant + N_GROUPS])
    group = period_group(args[3], args[4])  # (B, 1)
    assert torch.equal(without[..., N_COMMON:].argmax(-1), group[..., None].expand(-1, -1, K))
    for name, expected in (("lsdm-no-condition", True), ("lsdm", False), ("csdi-like", False)):
        assert CONFIGS[name].intercepts_without_environment is expected, name
    old = CONFIGS["lsdm-no-condition"].to_dict()
    del old["period_intercepts"]
    assert not ModelConfig.from_dict(old).period_intercepts
    assert Denoiser(ModelConfig.from_dict(old), env_dim=D, n_services=K).prior.n_features == N_COMMON


def test_the_environment_profile_adds_the_usual_places_block_after_the_older_layout():
    """With ``env_profile`` the environment input is [z, z̄] (2D wide): the prior's features keep the older
    layout as a prefix (so the intercept block stays where the no-condition comparison expects it) and add
    z̄ projected on the same axes x one-hot(period); z̄ moves only that block. Older checkpoints read as
    without it."""
    from engine.model.prior import ENV_AXES, N_GROUPS, MeanPrior

    cells = torch.randn(30, D).numpy()
    older, with_usual = MeanPrior(K, D, uses_env=True), MeanPrior(K, D, uses_env=True, env_profile=True)
    assert not MeanPrior(K, D, uses_env=False, env_profile=True).env_profile  # nothing without the environment
    for prior in (older, with_usual):
        prior.set_env_axes(cells)
    assert with_usual.n_features == older.n_features + min(ENV_AXES, D) * N_GROUPS
    batch = _inputs(20, seed=7)
    args = (batch["history"], batch["profile"][:, H:], batch["env"][:, H:], batch["hours"][:, H:], batch["days"][:, H:])
    a, b = older.features(*args), with_usual.features(*args)
    assert torch.equal(b[..., : older.n_features], a)
    usual_moved = args[2].clone()
    usual_moved[..., D:] += 1.0
    c = with_usual.features(*args[:2], usual_moved, *args[3:])
    assert torch.equal(c[..., : older.n_features], a) and not torch.allclose(c, b)
    # The model reads both embeddings; the configurations without the environment read neither.
    assert CONFIGS["lsdm"].env_width(D) == 2 * D and CONFIGS["lsdm-no-condition"].env_width(D) == D
    assert Denoiser(CONFIGS["lsdm"], env_dim=D, n_services=K).env_proj[0].in_features == 2 * D
    old = CONFIGS["lsdm"].to_dict()
    del old["env_profile"]
    older_config = ModelConfig.from_dict(old)
    assert not older_config.uses_env_profile and older_config.env_width(D) == D
    assert Denoiser(older_config, env_dim=D, n_services=K).prior.n_features == older.n_features


def test_an_unknown_device_or_cuda_without_a_gpu_is_refused_naming_the_field():
    """Issue 20: `--device bogus` and `--device cuda` on a machine without CUDA were torch tracebacks."""
    from engine.model import pick_device

    with pytest.raises(InputError, match="expected cpu, cuda or cuda:N, got 'bogus'") as caught:
        pick_device("bogus")
    assert caught.value.field == "device"
    assert pick_device("cpu") == torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(InputError, match=f"cuda:{count} was asked for") as caught:
        pick_device(f"cuda:{count}")  # one past the last GPU (the first, where there is none)
    assert caught.value.field == "device"
