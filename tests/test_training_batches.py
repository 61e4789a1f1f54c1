"""A training batch depends only on (seed, step, stage): made in a worker process or in line, it is the same, so a
GPU run with workers and a CPU run without them draw the same cases."""
import numpy as np
import torch

from qvl_compile.tasks.shapes import SPEC_SIZES
from qvl_compile.training.batches import BatchSource, make_batch
from qvl_compile.training.examples import ExampleEncoder
from qvl_compile.training.shapes import Stage

STAGE = Stage((("color", 1.0), ("two_images_red", 1.0), ("motion", 1.0)), sizes=SPEC_SIZES)
OTHER_STAGE = Stage((("count", 1.0),), sizes=SPEC_SIZES)


def _same(a, b) -> bool:
    (tasks_a, batch_a), (tasks_b, batch_b) = a, b
    return tasks_a == tasks_b and batch_a.keys() == batch_b.keys() and all(
        torch.equal(batch_a[k], batch_b[k]) for k in batch_a)


def test_a_batch_made_by_a_worker_equals_the_one_made_in_line(tiny_dir):
    encoder = ExampleEncoder(tiny_dir)
    ids = (5, 6)
    source = BatchSource(tiny_dir, encoder, seed=11, size=6, ids=ids, workers=1, ahead=3)
    try:
        from_worker = [source.get(step, STAGE, last_step=10) for step in range(3)]
        # a stage change re-makes the steps already asked for under the earlier stage
        after_change = source.get(3, OTHER_STAGE, last_step=10)
    finally:
        source.close()
    in_line = [make_batch(encoder, STAGE, 11, step, 6, ids) for step in range(3)]
    assert all(_same(a, b) for a, b in zip(from_worker, in_line))
    assert not _same(in_line[0], in_line[1])  # each step its own stream
    assert set(after_change[0]) == {"count"}
    assert _same(after_change, make_batch(encoder, OTHER_STAGE, 11, 3, 6, ids))
    assert np.isin(in_line[0][0], ["color", "two_images_red", "motion"]).all()


def test_the_position_embedding_steps_at_its_own_multiple_of_the_learning_rate(tiny_dir):
    from qvl_compile.families.qwen3_vl.loaders import load_full_model
    from qvl_compile.training.shapes import POSITION_EMBEDDING, TrainConfig, _held_out_examples, _optimizer

    model = load_full_model(tiny_dir)
    config = TrainConfig(lr=1e-3, position_lr_scale=20.0, stages=(STAGE,), held_out=2)
    optimizer = _optimizer(model, config)
    position = dict(model.named_parameters())[next(n for n, _ in model.named_parameters()
                                                    if n.endswith(POSITION_EMBEDDING))]
    scales = [(group["lr_scale"], len(group["params"])) for group in optimizer.param_groups]
    assert scales[-1] == (20.0, 1) and optimizer.param_groups[-1]["params"][0] is position
    assert sum(count for _, count in scales) == len(list(model.parameters()))  # every parameter in one group
    # held-out cases: only the recipe's tasks are encoded, and a task's cases do not depend on the recipe
    held_out = _held_out_examples(config, ExampleEncoder(tiny_dir))
    assert set(held_out) == {"color", "two_images_red", "motion"}
    other = _held_out_examples(TrainConfig(stages=(OTHER_STAGE, STAGE), held_out=2), ExampleEncoder(tiny_dir))
    assert all(np.array_equal(a.input_ids, b.input_ids) and np.array_equal(a.video_rows[0], b.video_rows[0])
               for a, b in zip(held_out["motion"], other["motion"]))


def test_a_run_begins_at_its_first_stage_and_refuses_one_its_recipe_lacks(tiny_dir, tmp_path, capsys):
    """--first-stage N continues a recipe past the stages an earlier leg passed: every step is drawn from stage N."""
    import json

    import pytest

    from qvl_compile.training.shapes import TrainConfig, main, train

    config = TrainConfig(steps=2, batch=2, warmup=1, stages=(OTHER_STAGE, Stage((("color", 1.0),), sizes=SPEC_SIZES)),
                         first_stage=1, log_every=1, eval_every=2, save_every=2, held_out=2, threads=1)
    out = train(tmp_path / "run", config, start_from=tiny_dir)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [record["stage"] for record in log] == [1, 1]
    assert all(set(record["loss"]) == {"color"} for record in log)
    with pytest.raises(SystemExit):
        main([str(tmp_path / "other"), "--recipe", "pick", "--first-stage", "3"])
    assert "--first-stage: expected 0 to 2 for recipe 'pick', got 3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path / "other"), "--decay-fraction", "0"])
    assert "--decay-fraction: expected a number in (0, 1], got 0.0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path / "other"), "--vision-digit-weight", "0.1"])  # the digit head reads the position head's tokens
    assert "--vision-digit-weight 0.1: expected --vision-aux-weight > 0 too, got 0.0" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_a_decay_fraction_of_one_decays_from_the_end_of_warmup():
    """--decay-fraction 1: a leg that only anneals (cosine from lr after warmup down to min_lr at the last step)."""
    from qvl_compile.training.shapes import TrainConfig, _lr

    config = TrainConfig(steps=1000, warmup=100, lr=1e-3, min_lr=1e-5, decay_fraction=1.0)
    rates = [_lr(config, step) for step in range(100, 1000)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))  # falls from the end of warmup on
    assert 0.95e-3 < rates[0] < 1e-3 and abs(rates[450] - 0.5 * (1e-3 + 1e-5)) < 1e-4 and rates[-1] < 1.1e-5


def test_every_recipe_names_tasks_the_generator_makes_and_gates_on_its_own_tasks():
    from qvl_compile.training.shapes import RECIPES
    from qvl_compile.training.stepping_stones import TRAINING_TASKS, make_training_case
    for name, stages in RECIPES.items():
        assert stages, name
        for stage in stages:
            tasks = dict(stage.tasks)
            assert set(tasks) <= set(TRAINING_TASKS), (name, set(tasks) - set(TRAINING_TASKS))
            assert all(weight > 0 for weight in tasks.values()), (name, tasks)
            assert {task for task, _ in stage.gates} <= set(tasks), (name, stage.gates)
        for task in dict(stages[-1].tasks):
            case = make_training_case(task, np.random.default_rng(7), stages[-1].sizes)
            assert case.answer and (case.images or case.video), (name, task)
