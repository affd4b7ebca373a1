"""Region VQA head: regions land where their tags were, a tiny LM learns to answer, bad input is refused clearly.

The LLM is a tiny random Llama with a word-level tokenizer, written to a folder in the test and loaded through
the same `load_causal_lm` as a real LLM's folder; nothing is downloaded.
"""

from __future__ import annotations

import pytest
import torch

from regionspot import RegionSpotConfig, build_regionspot
from regionspot.demo.language_model import write_tiny_causal_lm
from regionspot.modeling.region_lm import IGNORE_INDEX, RegionLanguageModel, load_causal_lm
from regionspot.modeling.region_projector import RegionProjector

CORPUS = [
    "what colour is <region1> ?",
    "what colour is <region2> ?",
    "is <region1> left of <region2> ?",
    "red blue green yes no",
]
CONDITION_DIM = 8


@pytest.fixture(scope="module", params=[True, False], ids=["chat-template", "plain-format"])
def lm_folder(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm")
    return write_tiny_causal_lm(folder, corpus=CORPUS, chat_template=request.param)


def _vqa(folder, *, tokens_per_region: int = 1, location_columns: int = 0) -> RegionLanguageModel:
    llm, tokenizer = load_causal_lm(folder)
    torch.manual_seed(0)
    projector = RegionProjector(
        condition_dim=CONDITION_DIM,
        hidden_size=64,
        tokens_per_region=tokens_per_region,
        location_columns=location_columns,
    )
    return RegionLanguageModel(llm=llm, tokenizer=tokenizer, projector=projector)


@pytest.mark.parametrize(("condition_tokens", "location_columns"), [(1, 0), (3, 0), (2, 4)])
def test_region_embeddings_land_exactly_where_their_tags_were(lm_folder, condition_tokens, location_columns):
    vqa = _vqa(lm_folder, tokens_per_region=condition_tokens, location_columns=location_columns)
    tokens_per_region = condition_tokens + (location_columns > 0)  # a location token is one more per region
    assert vqa.projector.tokens_per_region == tokens_per_region
    conversations = [
        [("what colour is <region1> ?", None)],
        [("is <region1> left of <region2> ?", "yes"), ("what colour is <region2> ?", None)],
    ]
    conditions = [torch.randn(1, CONDITION_DIM), torch.randn(2, CONDITION_DIM)]
    for side in ("left", "right"):
        answers = [[*c[:-1], (c[-1][0], "red")] for c in conversations] if side == "right" else conversations
        encoded = vqa.encode(answers, [1, 2], padding_side=side)
        lengths = encoded.attention_mask.sum(1)
        assert lengths[0] < lengths[1]  # prompts of different lengths, so padding shows
        pads = encoded.attention_mask == 0
        assert (pads[:, :1] if side == "left" else pads[:, -1:]).any()  # padding on the asked side only
        if side == "left":  # every row ends in its prompt: new tokens follow it directly
            assert encoded.attention_mask[:, -1].all()
        embeddings = vqa.input_embeddings(encoded, torch.cat(conditions))
        projected = vqa.projector(torch.cat(conditions)).flatten(0, 1)  # (3 * T, H)
        text = vqa.llm.get_input_embeddings()(encoded.input_ids)
        slots = encoded.region_slots
        # row 0 names region 1 of its own set; row 1 names its regions 1, 2 and 2 again (rows 1.. of the flat list)
        assert slots[0][slots[0] >= 0].tolist() == list(range(tokens_per_region))
        second = list(range(tokens_per_region, 2 * tokens_per_region))
        third = list(range(2 * tokens_per_region, 3 * tokens_per_region))
        assert slots[1][slots[1] >= 0].tolist() == second + third + third
        for row in range(2):
            for position in range(slots.shape[1]):
                expected = projected[slots[row, position]] if slots[row, position] >= 0 else text[row, position]
                torch.testing.assert_close(embeddings[row, position], expected, rtol=0, atol=0)
        if side == "right":  # only answer tokens are scored
            scored = encoded.labels != IGNORE_INDEX
            assert not scored[slots >= 0].any() and not scored[pads].any()
            answer_ids = vqa.tokenizer(" red", add_special_tokens=False)["input_ids"]
            assert encoded.labels[0][scored[0]].tolist()[: len(answer_ids)] == answer_ids


def test_the_location_token_is_made_from_the_box_alone():
    torch.manual_seed(0)
    projector = RegionProjector(condition_dim=CONDITION_DIM, hidden_size=16, tokens_per_region=2, location_columns=4)
    conditions = torch.randn(5, CONDITION_DIM)
    projector(conditions)  # one training step's batch statistics, so that evaluation standardises with them
    projector.eval()
    out = projector(conditions)
    assert out.shape == (5, 3, 16)
    features_changed = torch.cat([torch.randn(5, CONDITION_DIM - 4), conditions[:, -4:]], dim=1)
    again = projector(features_changed)
    torch.testing.assert_close(again[:, -1], out[:, -1], rtol=0, atol=0)  # the last token reads only the box
    assert not torch.allclose(again[:, :-1], out[:, :-1])  # the others read the whole condition
    box_changed = torch.cat([conditions[:, :-4], torch.randn(5, 4)], dim=1)
    assert not torch.allclose(projector(box_changed)[:, -1], out[:, -1])
    with pytest.raises(ValueError, match="location_columns"):
        RegionProjector(condition_dim=4, hidden_size=16, location_columns=5)


def test_the_projector_and_lm_overfit_a_few_region_questions(lm_folder):
    torch.manual_seed(0)
    vqa = _vqa(lm_folder)
    red, blue, green = (torch.randn(1, CONDITION_DIM) for _ in range(3))
    # The same question, different regions, different answers: only the region embeddings tell them apart.
    cases = [
        ([("what colour is <region1> ?", "red")], torch.cat([red])),
        ([("what colour is <region1> ?", "blue")], torch.cat([blue])),
        ([("what colour is <region2> ?", "green")], torch.cat([red, green])),
        ([("is <region1> left of <region2> ?", "yes"), ("what colour is <region1> ?", "blue")], torch.cat([blue, red])),
    ]
    conversations, conditions = [c for c, _ in cases], [r for _, r in cases]
    optimizer = torch.optim.AdamW(vqa.parameters(), lr=3e-3)
    for _ in range(150):
        loss = vqa.loss(conversations, conditions)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    questions = [[*c[:-1], (c[-1][0], None)] for c in conversations]
    assert vqa.generate(questions, conditions) == ["red", "blue", "green", "blue"]
    # batched generation equals one question at a time
    assert [vqa.generate([q], [r])[0] for q, r in zip(questions, conditions, strict=True)] == vqa.generate(
        questions, conditions
    )


def test_bad_questions_and_missing_llm_folders_are_refused_clearly(lm_folder, tmp_path):
    vqa = _vqa(lm_folder)
    two = torch.randn(2, CONDITION_DIM)
    with pytest.raises(ValueError, match=r"names <region3> but 2 region\(s\) were given"):
        vqa.generate([[("is <region3> left of <region1> ?", None)]], [two])
    with pytest.raises(ValueError, match="question is empty"):
        vqa.generate([[("  ", None)]], [two])
    with pytest.raises(ValueError, match="at least one question"):
        vqa.loss([[]], [two])
    with pytest.raises(ValueError, match="no answer to learn from"):
        vqa.loss([[("what colour is <region1> ?", None)]], [two])
    with pytest.raises(FileNotFoundError, match=r"no such folder.*nothing is downloaded"):
        load_causal_lm(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        load_causal_lm(tmp_path / "empty")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ValueError, match="holds no causal LM and tokenizer"):
        load_causal_lm(tmp_path / "broken")


def test_a_model_config_with_a_vqa_section_builds_answers_and_reloads_its_trained_weights(lm_folder, tmp_path):
    from regionspot.training.export import VQA_FILE, save_adapter

    data = RegionSpotConfig.from_yaml("tiny").to_dict()
    data["vqa"] = {"llm": str(lm_folder), "llm_training": "lora", "lora_targets": ["q_proj", "v_proj"]}
    config = RegionSpotConfig.from_dict(data)
    model = build_regionspot(config)
    trained = model.vqa.trained_state_dict()
    assert any("lora_A" in k for k in trained) and any(k.startswith("projector.") for k in trained)
    assert not any(p.requires_grad for n, p in model.vqa.llm.named_parameters() if "lora_" not in n)
    with torch.no_grad():
        for value in trained.values():
            value.add_(1 if not value.is_floating_point() else 0.01)  # "trained": differs from a fresh build
    _, yaml_path = save_adapter(model.adapter.state_dict(), config, tmp_path / "adapter.safetensors", vqa=trained)
    assert (tmp_path / VQA_FILE).is_file()
    again = build_regionspot(yaml_path)
    for name, value in again.vqa.trained_state_dict().items():
        torch.testing.assert_close(value, trained[name])
    wrong = RegionSpotConfig.from_yaml(yaml_path)
    wrong.vqa.llm_training = "frozen"  # a LoRA checkpoint for a frozen LLM: refused by name
    with pytest.raises(ValueError, match="does not fit this VQA head"):
        build_regionspot(wrong)
    wrong = RegionSpotConfig.from_yaml(yaml_path)
    wrong.vqa.location_token = True  # a projector trained without a location token
    with pytest.raises(ValueError, match="location_token=True"):
        build_regionspot(wrong)


def test_the_predictor_answers_questions_about_the_boxes_it_is_given(lm_folder):
    from regionspot.predictor import RegionSpotPredictor

    data = RegionSpotConfig.from_yaml("tiny").to_dict()
    predictor = RegionSpotPredictor(
        build_regionspot(RegionSpotConfig.from_dict({**data, "vqa": {"llm": str(lm_folder)}}))
    )
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.ask("what colour is <region1> ?", boxes=[[0, 0, 10, 10]])
    predictor.set_image(torch.randint(0, 255, (96, 128, 3), dtype=torch.uint8).numpy())
    boxes = [[4, 4, 60, 50], [50, 30, 120, 90]]
    answer = predictor.ask("is <region1> left of <region2> ?", boxes=boxes, max_new_tokens=3)
    assert isinstance(answer, str)
    answers = predictor.ask(["what colour is <region1> ?", "what colour is <region2> ?"], boxes=boxes, max_new_tokens=3)
    assert isinstance(answers, list) and len(answers) == 2
    with pytest.raises(ValueError, match=r"names <region3> but 2 region\(s\)"):
        predictor.ask("what colour is <region3> ?", boxes=boxes)
    with pytest.raises(ValueError, match="question is empty"):
        predictor.ask("", boxes=boxes)
    plain = RegionSpotPredictor(build_regionspot("tiny"))
    plain.set_image(torch.zeros(32, 32, 3, dtype=torch.uint8).numpy())
    with pytest.raises(ValueError, match="no VQA head"):
        plain.ask("what colour is <region1> ?", boxes=[[0, 0, 10, 10]])
