"""The training-only readout on the pointer head (training/pointer_readout.py): it reads that head's own context
vector (checked against attention weights x values computed from the layer's parts), its gradient reaches the
layers up to that head and no further, its digits are the reply's, and it trains, saves and resumes."""
import json

import numpy as np
import pytest
import torch

from qvl_compile.runtime.grounding import parse_boxes
from qvl_compile.training.examples import ExampleEncoder
from qvl_compile.training.pointer import TARGET_KEY
from qvl_compile.training.pointer_readout import BOX_KEY, HEAD_FILE, PointerReadout
from qvl_compile.training.shapes import Stage, TrainConfig, _forward, _optimizer, _train_step, model_inputs
from qvl_compile.training.vision_aux import box_digits

LAYER, HEAD = 2, 1


def _ground_batch(tiny_dir, seed: int = 5):
    from qvl_compile.training.batches import make_batch

    config = json.loads((tiny_dir / "config.json").read_text())
    return make_batch(ExampleEncoder(tiny_dir), Stage((("ground", 1.0), ("color", 1.0))), seed, 0, 6,
                      (config["image_token_id"], config["video_token_id"]))


def _model(tiny_dir):
    from qvl_compile.families.qwen3_vl.loaders import load_full_model

    torch.manual_seed(0)
    model = load_full_model(tiny_dir).train()
    model.model.language_model.config._attn_implementation = "eager"  # attention weights, as the pointer loss runs
    return model


def test_the_readout_reads_its_heads_context_vector(tiny_dir):
    """attention weights of the head x the values of its key/value group, from the layer's own projections."""
    model = _model(tiny_dir)
    _, batch = _ground_batch(tiny_dir)
    readout = PointerReadout(model, LAYER, HEAD)
    layer = model.model.language_model.layers[LAYER]
    normed = []  # the attention's input as the layer computes it (DeepStack has added to the image rows by then)
    hook = layer.input_layernorm.register_forward_hook(lambda module, inputs, output: normed.append(output))
    outputs = model(**model_inputs(model, batch), use_cache=False, output_attentions=True)
    hook.remove()
    kept = readout._contexts[-1]  # [B, S, head_dim]
    text = model.config.text_config
    group = HEAD // (text.num_attention_heads // text.num_key_value_heads)
    values = layer.self_attn.v_proj(normed[-1])  # [B, S, kv_heads * head_dim]
    values = values[..., group * text.head_dim:(group + 1) * text.head_dim]  # [B, S, head_dim]
    expected = outputs.attentions[LAYER][:, HEAD] @ values  # [B, S, S] @ [B, S, head_dim]
    assert kept.shape == expected.shape
    real = batch["attention_mask"].bool()  # padding positions' rows are not compared
    assert torch.allclose(kept[real], expected[real], atol=1e-4), float((kept[real] - expected[real]).abs().max())
    other = (outputs.attentions[LAYER][:, HEAD + 1] @ values)[real]
    assert not torch.allclose(kept[real], other, atol=1e-2)  # not another head's


def test_its_gradient_reaches_the_layers_up_to_the_head_and_no_further(tiny_dir):
    model = _model(tiny_dir)
    _, batch = _ground_batch(tiny_dir)
    readout = PointerReadout(model, LAYER, HEAD)
    _forward(model, batch)
    loss = readout.loss(batch)
    loss.backward()
    layers = model.model.language_model.layers
    assert layers[LAYER].self_attn.v_proj.weight.grad.abs().sum() > 0
    assert layers[0].mlp.up_proj.weight.grad.abs().sum() > 0
    assert model.model.visual.patch_embed.proj.weight.grad.abs().sum() > 0  # through the image tokens it reads
    for name, parameter in list(layers[LAYER].self_attn.o_proj.named_parameters()) + list(layers[LAYER + 1].named_parameters()):
        assert parameter.grad is None or not parameter.grad.any(), name
    assert 0.8 * torch.log(torch.tensor(10.0)) < loss < 1.5 * torch.log(torch.tensor(10.0))  # starts near chance


def test_the_boxes_are_the_replies_and_only_for_rows_with_a_pointer_target(tiny_dir):
    from qvl_compile.training.pointer import pointer_boxes
    from qvl_compile.training.stepping_stones import make_training_case

    rng = np.random.default_rng(3)
    cases = [make_training_case(task, rng) for task in ("ground", "color", "ground", "count", "ground_one")]
    boxes = pointer_boxes(cases)
    for case, box in zip(cases, boxes):
        replied = parse_boxes(case.answer) if case.task.startswith("ground") else None
        if replied is None or len(replied) != 1:
            assert not box.any(), case.task
            continue
        numbers = [min(n, 999) for n in replied[0].bbox]
        assert box_digits(box[None])[0].tolist() == [[n // 100, n // 10 % 10] for n in numbers], case.answer
    _, batch = _ground_batch(tiny_dir)
    assert torch.equal(batch[BOX_KEY].any(1), batch[TARGET_KEY].sum(1) > 0)


def test_it_trains_saves_and_resumes(tiny_dir, tmp_path):
    model = _model(tiny_dir)
    _, batch = _ground_batch(tiny_dir)
    readout = PointerReadout(model, LAYER, HEAD)
    optimizer = _optimizer(model, TrainConfig(lr=1e-3, weight_decay=0.0), readout)
    logged = [_train_step(model, optimizer, batch, 1e-3, {"pointer_readout": (readout, 1.0)})[1] for _ in range(8)]
    losses = [record["pointer_readout"] for record in logged]
    assert all(record["pointer_digits"] == record["pointer_readout"] for record in logged)
    assert losses[-1] < 0.8 * losses[0], losses
    assert not PointerReadout(model, LAYER, HEAD).load_if_saved(tmp_path)
    readout.save(tmp_path)
    assert (tmp_path / HEAD_FILE).is_file() and not list(tmp_path.glob("*.tmp"))
    resumed = PointerReadout(model, LAYER, HEAD)
    assert resumed.load_if_saved(tmp_path)
    for name, value in readout.classify.state_dict().items():
        assert torch.equal(resumed.classify.state_dict()[name], value), name


def test_the_readout_without_the_pointer_loss_is_refused(tmp_path, capsys):
    from qvl_compile.training.shapes import main

    with pytest.raises(SystemExit):
        main([str(tmp_path / "run"), "--pointer-digit-weight", "0.5"])
    assert "--pointer-digit-weight 0.5: expected --pointer-weight > 0 too, got 0.0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_run_with_the_readout_logs_it_and_leaves_its_head_for_the_next_leg(tiny_dir, tmp_path, caplog):
    import logging

    from qvl_compile.training.shapes import train

    config = TrainConfig(steps=2, batch=2, warmup=1, stages=(Stage((("ground", 1.0),)),), log_every=1, eval_every=2,
                         save_every=2, held_out=2, threads=1, pointer_weight=1.0, pointer_digit_weight=0.5,
                         pointer_layer=LAYER, pointer_head=HEAD)
    first = train(tmp_path / "first", config, start_from=tiny_dir)
    log = [json.loads(line) for line in (first / "train_log.jsonl").read_text().splitlines()]
    assert all({"pointer", "pointer_readout", "pointer_digits"} <= set(record["loss"]) for record in log), log
    assert (first / HEAD_FILE).is_file()
    with caplog.at_level(logging.INFO, logger="qvl_compile.training.shapes"):
        train(tmp_path / "second", config, start_from=first)
    assert f"PointerReadout: continuing with the head saved in {first}" in caplog.text
