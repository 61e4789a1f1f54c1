"""The training-only pointer loss (training/pointer.py): its targets are the boxed shape's image tokens, in the
decoder's sequence, and a few steps with it move the chosen head's attention onto them."""
import json

import numpy as np
import torch

from qvl_compile.runtime.preprocess import ImageProcessorConfig, preprocess_image
from qvl_compile.tasks.shapes import Case, Shape, draw, grounding_reply
from qvl_compile.training.examples import ExampleEncoder, collate
from qvl_compile.training.pointer import TARGET_KEY, PointerLoss, pointer_targets
from qvl_compile.training.shapes import Stage, TrainConfig, _optimizer, _train_step

RED = Shape("circle", "red", (200, 20, 300, 120))
BLUE = Shape("square", "blue", (20, 140, 110, 230))


def _cases():
    image = draw((320, 256), [RED, BLUE])
    ground = Case("ground", "Locate the blue square.", grounding_reply(BLUE, 320, 256), (image,))
    colour = Case("color", "What color is the shape?", "red", (draw((160, 160), [Shape("circle", "red", (40, 40, 100, 100))]),))
    return [ground, colour]


def _token_ids(tiny_dir) -> tuple[int, int]:
    config = json.loads((tiny_dir / "config.json").read_text())
    return config["image_token_id"], config["video_token_id"]


def test_targets_are_the_boxed_shapes_image_tokens_in_the_sequence(tiny_dir):
    encoder = ExampleEncoder(tiny_dir)
    image_id, video_id = _token_ids(tiny_dir)
    cases = _cases()
    examples = [encoder.encode(case) for case in cases]
    batch = collate(examples, encoder.pad_id, image_id, video_id)
    target = pointer_targets(cases, examples, batch["input_ids"], image_id, encoder.merge_size)
    assert target.shape == batch["input_ids"].shape
    assert not target[1].any()  # the colour question boxes nothing
    image_positions = torch.nonzero(batch["input_ids"][0] == image_id).flatten()
    assert set(torch.nonzero(target[0]).flatten().tolist()) <= set(image_positions.tolist())
    # the flagged tokens are the ones whose pixels hold the blue square (the runtime's own preprocessing)
    processor = ImageProcessorConfig.from_dir(tiny_dir)
    rows, _ = preprocess_image(cases[0].images[0], processor)
    pixels = rows.reshape(len(image_positions), -1, rows.shape[1])  # [tokens, 4 patches, patch values]
    blue = np.array([30, 70, 220]) / 255
    flagged = target[0, image_positions].numpy().astype(bool)
    assert flagged.sum() >= 2  # the tiny processor shrinks the image to 6 x 5 tokens: the square covers two centres
    for token in np.flatnonzero(flagged):
        assert _holds(pixels[token], blue, processor), token
    assert json.loads(cases[0].answer)[0]["label"] == "blue square"


def _holds(token_rows: np.ndarray, colour: np.ndarray, processor: ImageProcessorConfig) -> bool:
    """Whether a merged token's patch rows contain the colour (rows are normalized as the processor does)."""
    mean = np.asarray(processor.image_mean)[None, :, None]
    std = np.asarray(processor.image_std)[None, :, None]
    values = token_rows.reshape(-1, 3, token_rows.shape[-1] // 3) * std + mean  # [patches x frames, rgb, pixels]
    return bool((np.abs(values - colour[None, :, None]) < 0.05).all(axis=1).any())


def test_a_few_steps_move_the_heads_attention_onto_the_boxed_shape(tiny_dir):
    from qvl_compile.families.qwen3_vl.loaders import load_full_model
    from qvl_compile.training.batches import make_batch

    torch.manual_seed(0)
    model = load_full_model(tiny_dir).train()
    encoder = ExampleEncoder(tiny_dir)
    _, batch = make_batch(encoder, Stage((("ground", 1.0),)), 5, 0, 4, _token_ids(tiny_dir))
    assert batch[TARGET_KEY].sum() > 0
    pointer = PointerLoss(model, layer=2, head=0)
    optimizer = _optimizer(model, TrainConfig(lr=1e-3, weight_decay=0.0))
    losses = [_train_step(model, optimizer, batch, 1e-3, {"pointer": (pointer, 1.0)})[1]["pointer"] for _ in range(6)]
    assert losses[-1] < 0.7 * losses[0], losses


def test_a_layer_or_head_the_model_lacks_is_refused_in_one_line(tiny_dir, tmp_path, capsys):
    import pytest

    from qvl_compile.training.shapes import main

    text = json.loads((tiny_dir / "config.json").read_text())["text_config"]
    layers, heads = text["num_hidden_layers"], text["num_attention_heads"]
    for flag, value, expected in (
            ("--pointer-layer", str(layers), f"expected 0 to {layers - 1} (the model's decoder layers), got {layers}"),
            ("--pointer-head", "-1", f"expected 0 to {heads - 1} (attention heads per layer), got -1")):
        with pytest.raises(SystemExit):
            main([str(tmp_path / flag), "--start-from", str(tiny_dir), "--pointer-weight", "1", flag, value, "--steps", "1"])
        assert expected in capsys.readouterr().err
