"""maskclip on a tiny random-weight open_clip ViT written to a file and loaded through build_teacher: the real code
path on tiny inputs (no pretrained weights can exist here)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from orchestrator.teachers import TeacherSpec, build_teacher
from orchestrator.teachers.base import images_to_tensor
from orchestrator.teachers.maskclip import (dense_features, embed_tokens, resize_pos_embed, run_blocks,
                                            value_path_block, window_starts)
from orchestrator.core.vocab import ClassConcepts, Vocabulary

TINY = {"embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
VOCAB = Vocabulary((ClassConcepts("background"), ClassConcepts("cat", ("kitty",)), ClassConcepts("dog"),
                    ClassConcepts("bird")))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[str, str, torch.nn.Module]:
    """(config json path, weights path, the model): a random ViT-32/8 saved as a plain state dict."""
    import open_clip

    folder = tmp_path_factory.mktemp("maskclip")
    config = folder / "tiny-vit-maskclip-test.json"
    config.write_text(json.dumps(TINY))
    open_clip.add_model_config(str(config))
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-vit-maskclip-test", pretrained=None).eval()
    weights = folder / "tiny.pt"
    torch.save(model.state_dict(), weights)
    return str(config), str(weights), model


def _teacher(tiny, vocab=VOCAB, **kw):
    config, weights, _ = tiny
    return build_teacher(TeacherSpec(kind="maskclip", pretrained=weights, arch=config, **kw), vocab)


def _images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_shapes_types_and_non_native_size(tiny):
    labels, conf = _teacher(tiny).predict(_images(2, 40, 56))  # native is 32×32: positions get resized
    assert labels.shape == conf.shape == (2, 40, 56)
    assert labels.dtype == np.uint8 and conf.dtype == np.float32
    assert labels.max() < VOCAB.num_classes
    assert (conf >= 1 / VOCAB.num_classes - 1e-6).all() and (conf <= 1 + 1e-6).all()


def test_deterministic_across_calls_and_builds(tiny):
    images = _images(3, 32, 48)
    a = _teacher(tiny).predict(images)
    b = _teacher(tiny).predict(images)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_class_order_follows_vocabulary(tiny):
    images = _images(4, 48, 48)
    a, conf_a = _teacher(tiny).predict(images)
    swapped = Vocabulary((VOCAB.classes[0], VOCAB.classes[2], VOCAB.classes[1], VOCAB.classes[3]))
    b, conf_b = _teacher(tiny, swapped).predict(images)
    assert {1, 2} <= set(np.unique(a).tolist())  # otherwise the swap would go unnoticed
    np.testing.assert_array_equal(b, np.array([0, 2, 1, 3], np.uint8)[a])
    np.testing.assert_allclose(conf_a, conf_b, rtol=1e-5)


def test_background_concepts_vote_for_class_zero(tiny):
    images = _images(4, 48, 48)
    no_dog = Vocabulary((VOCAB.classes[0], VOCAB.classes[1], VOCAB.classes[3]), background_concepts=("dog",))
    teacher, merged_teacher = _teacher(tiny), _teacher(tiny, no_dog)
    x = images_to_tensor(images, torch.device("cpu"))
    with torch.inference_mode():
        full, merged = teacher.class_logits(x), merged_teacher.class_logits(x)
    # At token resolution class 0 is exactly max(background, dog); the other classes are untouched.
    torch.testing.assert_close(merged[:, 0], torch.maximum(full[:, 0], full[:, 2]))
    torch.testing.assert_close(merged[:, 1:], full[:, [1, 3]])
    labels, _ = teacher.predict(images)
    merged_labels, _ = merged_teacher.predict(images)
    assert (labels == 2).any()
    # Pixel level: dog pixels become background, bird (3) becomes 2; bilinear upsampling of the maxed logits
    # can flip a few pixels along region borders.
    assert (merged_labels == np.array([0, 1, 0, 2], np.uint8)[labels]).mean() > 0.97


def test_synonyms_are_maxed_into_their_class(tiny):
    images = _images(2, 32, 32)
    plain = Vocabulary((VOCAB.classes[0], ClassConcepts("cat"), VOCAB.classes[2], VOCAB.classes[3]))
    teacher, plain_teacher = _teacher(tiny), _teacher(tiny, plain)
    x = images_to_tensor(images, torch.device("cpu"))
    with torch.inference_mode():
        with_syn, without = teacher.class_logits(x), plain_teacher.class_logits(x)
    assert (with_syn[:, 1] >= without[:, 1] - 1e-5).all() and (with_syn[:, 1] > without[:, 1] + 1e-3).any()
    torch.testing.assert_close(with_syn[:, [0, 2, 3]], without[:, [0, 2, 3]])


def test_sliding_window_shape_and_single_window_equivalence(tiny):
    teacher = _teacher(tiny, sliding_window=True)
    labels, conf = teacher.predict(_images(2, 48, 80))
    assert labels.shape == conf.shape == (2, 48, 80)
    small = _images(2, 32, 24)  # fits in one window: identical to whole-image inference
    np.testing.assert_array_equal(teacher.predict(small)[1], _teacher(tiny).predict(small)[1])
    assert window_starts(80, 32, 22) == [0, 22, 44, 48]
    assert window_starts(20, 32, 22) == [0]


def test_resolution_resizes_and_returns_input_size(tiny):
    labels, conf = _teacher(tiny, resolution=64).predict(_images(2, 40, 24))
    assert labels.shape == conf.shape == (2, 40, 24)


def test_pos_embed_resize_keeps_class_row_and_identity_at_native_grid():
    pos = torch.randn(1 + 4 * 4, 8)
    same = resize_pos_embed(pos, (4, 4), (4, 4))
    assert same is pos
    bigger = resize_pos_embed(pos, (4, 4), (5, 7))
    assert bigger.shape == (1 + 5 * 7, 8)
    torch.testing.assert_close(bigger[0], pos[0])


def test_dense_path_matches_open_clip_term_by_term(tiny):
    _, _, model = tiny
    visual = model.visual
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens, hw = embed_tokens(visual, x)
        before_last = run_blocks(visual, tokens)
        last = visual.transformer.resblocks[-1]
        # Our embedding + first blocks + open_clip's own last block + CLS pooling == open_clip's encode_image.
        pooled = visual.ln_post(last(before_last)[:, 0]) @ visual.proj
        torch.testing.assert_close(pooled, model.encode_image(x))
        # The value path == open_clip's last block with each token allowed to attend only to itself.
        n = before_last.shape[1]
        self_only = torch.full((n, n), float("-inf")).fill_diagonal_(0.0)
        torch.testing.assert_close(value_path_block(last, before_last), last(before_last, attn_mask=self_only))
        dense = dense_features(visual, x)
    assert hw == (4, 4) and dense.shape == (2, TINY["embed_dim"], 4, 4)
    torch.testing.assert_close(dense.norm(dim=1), torch.ones(2, 4, 4))


def test_digest_is_file_sha256(tiny):
    import hashlib

    from orchestrator.teachers.base import weights_digest_for

    _, weights, _ = tiny
    with open(weights, "rb") as f:
        assert weights_digest_for(weights, "any-arch") == hashlib.sha256(f.read()).hexdigest()


def test_missing_weights_file_is_a_clear_error(tiny, tmp_path):
    config, _, _ = tiny
    spec = TeacherSpec(kind="maskclip", pretrained=str(tmp_path / "gone.pt"), arch=config)
    with pytest.raises(FileNotFoundError, match="gone.pt"):
        build_teacher(spec, VOCAB)
