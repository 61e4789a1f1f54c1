"""The training-only dense position loss (training/vision_aux.py): its targets name the right tokens, and one
training step with it moves the head and the vision tower."""
import numpy as np
import torch

from qvl_compile.runtime.preprocess import ImageProcessorConfig, preprocess_image
from qvl_compile.tasks.shapes import Shape, draw
from qvl_compile.training.examples import ExampleEncoder
from qvl_compile.training.shapes import Stage, TrainConfig, _forward, _optimizer, _train_step
from qvl_compile.training.vision_aux import VisionAux, dense_targets


def test_targets_give_each_token_its_centre_and_the_box_it_lies_in():
    # 160 x 96 pixels, grid (1, 6, 10) patches -> 3 rows x 5 columns of merged tokens, each 32 x 32 pixels
    image = draw((160, 96), [Shape("square", "red", (64, 32, 128, 96))])
    target, inside = dense_targets(image, (1, 6, 10), 2)
    assert target.shape == (15, 6) and inside.shape == (15,)
    centres = [((col * 32 + 16) / 160, (row * 32 + 16) / 96) for row in range(3) for col in range(5)]
    np.testing.assert_allclose(target[:, :2], centres, rtol=1e-6)
    # centres inside the box: x in {80, 112}, y in {48, 80}
    expected = [64 <= x * 160 <= 128 and 32 <= y * 96 <= 96 for x, y in centres]
    assert inside.astype(bool).tolist() == expected and inside.sum() == 4
    np.testing.assert_allclose(target[inside == 1, 2:], [[0.4, 1 / 3, 0.8, 1.0]] * 4, rtol=1e-6)
    assert not target[inside == 0, 2:].any()
    frames, _ = dense_targets(image, (2, 6, 10), 2)  # each temporal patch repeats the frame's tokens
    np.testing.assert_array_equal(frames, np.concatenate([target, target]))


def test_targets_follow_the_towers_token_order(tiny_dir):
    """Through the runtime's own preprocessing (rows come in 2x2 merge windows): every token flagged inside the box
    is one whose four patches hold the shape's colour, in a wide image with the shape in one corner, where a rows /
    columns mix-up would flag other tokens."""
    image = draw((320, 128), [Shape("square", "blue", (224, 64, 320, 128))])
    rows, grid = preprocess_image(image, ImageProcessorConfig.from_dir(tiny_dir))
    _, inside = dense_targets(image, grid, 2)
    coloured = (rows.reshape(-1, 4, rows.shape[1]) < 0.9).any(axis=(1, 2))  # [tokens]: white is 1.0 after normalizing
    assert inside.sum() >= 2 and len(inside) == len(coloured)
    assert coloured[inside == 1].all()
    assert (coloured & (inside == 0)).sum() <= inside.sum()  # only the box's edge tokens are coloured outside it


def test_the_aux_loss_alone_trains_the_head_and_the_tower_and_falls(tiny_dir):
    from qvl_compile.families.qwen3_vl.loaders import load_full_model
    from qvl_compile.training.batches import make_batch

    torch.manual_seed(0)
    model = load_full_model(tiny_dir).train()
    encoder = ExampleEncoder(tiny_dir)
    stage = Stage((("ground", 1.0), ("motion", 1.0)))
    _, batch = make_batch(encoder, stage, 3, 0, 4, (model.config.image_token_id, model.config.video_token_id))
    assert batch["vision_targets"].shape[0] == sum(t * h * w // 4 for t, h, w in batch["image_grid_thw"].tolist())
    assert batch["vision_inside"].sum() > 0
    batch["labels"][:] = -100  # no reply loss: whatever moves now moves through the aux loss
    aux = VisionAux(model)
    optimizer = _optimizer(model, TrainConfig(lr=1e-3, weight_decay=0.0), aux)
    tower = model.model.visual.patch_embed.proj.weight.detach().clone()
    head = aux.head[1].weight.detach().clone()
    decoder = model.model.language_model.layers[0].mlp.up_proj.weight.detach().clone()
    with torch.no_grad():  # an evaluation forward between steps (teacher_forced_accuracy) is not the loss's input
        _forward(model, batch)
    assert aux._outputs == []
    aux_losses = [_train_step(model, optimizer, batch, 1e-3, {"vision_aux": (aux, 1.0)})[1]["vision_aux"] for _ in range(6)]
    assert not torch.equal(aux.head[1].weight, head) and not torch.equal(model.model.visual.patch_embed.proj.weight, tower)
    assert torch.equal(model.model.language_model.layers[0].mlp.up_proj.weight, decoder)
    assert aux_losses[-1] < 0.5 * aux_losses[0], aux_losses


def test_a_saved_head_is_what_the_next_run_continues_with(tiny_dir, tmp_path):
    from qvl_compile.families.qwen3_vl.loaders import load_full_model
    from qvl_compile.training.vision_aux import HEAD_FILE

    model = load_full_model(tiny_dir)
    trained = VisionAux(model)
    with torch.no_grad():
        trained.head[1].weight.add_(1.0)  # unlike any fresh initialisation
    assert not VisionAux(model).load_if_saved(tmp_path)  # nothing saved yet: a fresh head
    trained.save(tmp_path)
    assert (tmp_path / HEAD_FILE).is_file() and not list(tmp_path.glob("*.tmp"))
    resumed = VisionAux(model)
    assert not torch.equal(resumed.head[1].weight, trained.head[1].weight)
    assert resumed.load_if_saved(tmp_path)
    for name, value in trained.head.state_dict().items():
        assert torch.equal(resumed.head.state_dict()[name], value), name


def test_the_digit_targets_are_the_digits_of_the_grounding_reply():
    """box_digits on the dense targets' box gives the hundreds and tens of the reply's own numbers."""
    import json

    from qvl_compile.tasks.shapes import grounding_reply
    from qvl_compile.training.vision_aux import box_digits

    rng = np.random.default_rng(11)
    checked = 0
    for _ in range(50):
        width, height = (int(v) for v in rng.integers(96, 385, size=2))
        side = int(rng.integers(20, min(width, height) // 2))
        x1, y1 = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
        shape = Shape("circle", "green", (x1, y1, x1 + side, y1 + side))
        # one merged token per 8 x 8 pixels: grid (1, height // 4, width // 4) patches, merged 2 x 2
        target, inside = dense_targets(draw((width, height), [shape]), (1, height // 4, width // 4), 2)
        numbers = json.loads(grounding_reply(shape, width, height))[0]["bbox_2d"]
        expected = [[min(n, 999) // 100, min(n, 999) // 10 % 10] for n in numbers]
        for row in np.flatnonzero(inside):
            assert box_digits(torch.from_numpy(target[row:row + 1, 2:]))[0].tolist() == expected
            checked += 1
    assert checked > 50


def test_the_digit_head_trains_saves_and_resumes(tiny_dir, tmp_path):
    from qvl_compile.families.qwen3_vl.loaders import load_full_model
    from qvl_compile.training.batches import make_batch
    from qvl_compile.training.vision_aux import DIGIT_HEAD_FILE

    torch.manual_seed(0)
    model = load_full_model(tiny_dir).train()
    encoder = ExampleEncoder(tiny_dir)
    _, batch = make_batch(encoder, Stage((("ground", 1.0),)), 4, 0, 4,
                          (model.config.image_token_id, model.config.video_token_id))
    batch["labels"][:] = -100
    plain, digits = VisionAux(model), VisionAux(model, digit_weight=1.0)
    assert plain.digits is None
    optimizer = _optimizer(model, TrainConfig(lr=1e-3, weight_decay=0.0), digits)
    logged = [_train_step(model, optimizer, batch, 1e-3, {"vision_aux": (digits, 1.0)})[1] for _ in range(8)]
    losses = [record["vision_aux"] for record in logged]
    assert losses[0] > np.log(10)  # the digit loss starts near chance (ln 10 per digit) on top of the position loss
    assert losses[-1] < 0.8 * losses[0], losses
    for record in logged:  # the log shows the two parts apart; the weighted sum is what was minimised
        assert abs(record["vision_position"] + 1.0 * record["vision_digits"] - record["vision_aux"]) < 1e-4, record
    first, last = logged[0]["vision_digits"], logged[-1]["vision_digits"]
    assert 0.8 * np.log(10) < first < 1.5 * np.log(10) and last < first, (first, last)
    digits.save(tmp_path)
    assert (tmp_path / DIGIT_HEAD_FILE).is_file()
    resumed = VisionAux(model, digit_weight=1.0)
    assert resumed.load_if_saved(tmp_path)
    assert torch.equal(resumed.digits.weight, digits.digits.weight)
    assert plain.load_if_saved(tmp_path)  # a run without the digit head still continues with the position head
