"""Region VQA: any Hugging Face causal LM reading regions where a prompt names them (All-Seeing / Osprey style).

A question names regions with tags: "is <region1> left of <region2>?". Each tag becomes `tokens_per_region`
input positions whose embeddings are the region's projected condition (`RegionProjector`); the rest of the
prompt is the tokenizer's own chat template (or a plain "USER: ... ASSISTANT:" format for a tokenizer without
one), so that an instruction-tuned LLM reads the format it was tuned on. Training scores answer tokens only.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from regionspot.modeling.region_projector import RegionProjector

REGION_TAG = re.compile(r"<region(\d+)>")
IGNORE_INDEX = -100  # label of a position whose token is not scored (prompt, region, padding)
_ENCODED_ROWS_KEPT = 100_000  # conversations whose encoding is kept (a few KB each)
# One (question, answer) turn; in a conversation handed to `generate`, the last answer is None.
Turn = tuple[str, str | None]


@dataclass
class EncodedConversations:
    """B conversations as LLM inputs, padded to L. `region_slots` says which row of the batch's region
    embeddings goes where (-1: a text token)."""

    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L)
    region_slots: torch.Tensor  # (B, L)
    labels: torch.Tensor  # (B, L): the answers' token ids, IGNORE_INDEX elsewhere


def load_causal_lm(folder: str | Path, *, dtype: str = "auto"):
    """A causal LM and its tokenizer from a local folder (`save_pretrained`'s layout); never downloads.

    Raises:
        FileNotFoundError: no folder, or no config.json in it.
        ValueError: the folder does not hold a causal LM and tokenizer transformers can read.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer  # imported on use: transformers loads slowly

    path = Path(folder)
    if not (path / "config.json").is_file():
        found = "no config.json in it" if path.is_dir() else "no such folder"
        raise FileNotFoundError(
            f"vqa.llm: no Hugging Face model folder at {path} ({found}). Give a local folder as save_pretrained "
            "writes it (config.json, the weights, the tokenizer files); nothing is downloaded."
        )
    torch_dtype = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        llm = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch_dtype)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"vqa.llm: {path} holds no causal LM and tokenizer that transformers can load: {err}") from err
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
        raise ValueError(f"vqa.llm: the tokenizer in {path} has neither a pad nor an EOS token to pad with")
    return llm, tokenizer


class RegionLanguageModel(nn.Module):
    """A causal LLM, its tokenizer and the projector that puts regions into its prompts.

    Args:
        llm: a transformers causal LM (`AutoModelForCausalLM`), possibly wrapped by peft.
        tokenizer: its tokenizer.
        projector: region conditions -> LLM input embeddings.
        max_new_tokens: the default answer length cap of `generate`.
    """

    def __init__(self, *, llm: nn.Module, tokenizer, projector: RegionProjector, max_new_tokens: int = 32) -> None:
        super().__init__()
        self.llm = llm
        self.tokenizer = tokenizer
        self.projector = projector
        self.max_new_tokens = max_new_tokens
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._rows: OrderedDict[tuple[Turn, ...], tuple[list[int], list[int], list[int]]] = OrderedDict()

    def train(self, mode: bool = True) -> RegionLanguageModel:
        super().train(mode)
        if not any(p.requires_grad for p in self.llm.parameters()):
            self.llm.eval()  # a frozen LLM never switches to training behaviour (dropout)
        return self

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """What training changes, by name: the projector's state (weights and its standardisation's running
        statistics) and the LLM's LoRA or full weights when those train; what a checkpoint keeps (a frozen LLM
        comes from its folder)."""
        state = {f"projector.{name}": value.detach() for name, value in self.projector.state_dict().items()}
        return state | {name: p.detach() for name, p in self.llm.named_parameters(prefix="llm") if p.requires_grad}

    # ----- prompts ------------------------------------------------------------------------------------------------
    def pieces(self, conversation: Sequence[Turn]) -> list[tuple[str, bool]]:
        """The conversation as rendered text pieces, each (text, is_answer), in order.

        Each prompt piece is what the template adds for a question (with the assistant's header), each answer
        piece what it adds for the answer (with the end-of-turn marker, so that the LLM learns to stop).
        """
        pieces: list[tuple[str, bool]] = []
        messages: list[dict[str, str]] = []
        rendered = ""
        for question, answer in conversation:
            messages.append({"role": "user", "content": question})
            prompt = self._render(messages, generation=True)
            pieces.append((_continuation(prompt, rendered), False))
            if answer is None:
                break
            messages.append({"role": "assistant", "content": answer})
            rendered = self._render(messages, generation=False)
            pieces.append((_continuation(rendered, prompt), True))
        return pieces

    def _render(self, messages: list[dict[str, str]], *, generation: bool) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
        text = self.tokenizer.bos_token or ""
        for message in messages:
            if message["role"] == "user":
                text += ("\n" if len(text) > len(self.tokenizer.bos_token or "") else "") + "USER: "
                text += message["content"] + "\nASSISTANT:"
            else:
                text += " " + message["content"] + (self.tokenizer.eos_token or "")
        return text

    def encode(
        self, conversations: Sequence[Sequence[Turn]], region_counts: Sequence[int], *, padding_side: str
    ) -> EncodedConversations:
        """B conversations about B sets of regions (counts) -> padded inputs; `padding_side` "right" for training,
        "left" for generation (new tokens follow the prompt directly).

        Raises:
            ValueError: an empty conversation or question, a question naming a region it was not given, or a
                conversation handed to generation that does not end in an open question (and vice versa).
        """
        if len(conversations) != len(region_counts):
            raise ValueError(f"{len(conversations)} conversations but {len(region_counts)} region sets")
        tokens_per_region = self.projector.tokens_per_region
        rows, offset = [], 0
        for conversation, count in zip(conversations, region_counts, strict=True):
            _check_conversation(conversation, count, open_end=padding_side == "left")
            ids, slots, labels = self._encoded_row(tuple(tuple(turn) for turn in conversation))
            rows.append((ids, [s + offset if s >= 0 else s for s in slots], labels))
            offset += count * tokens_per_region
        return _pad(rows, pad_id=self.pad_id, side=padding_side)

    def _encoded_row(self, conversation: tuple[Turn, ...]) -> tuple[list[int], list[int], list[int]]:
        """One conversation's ids, region slots (counted from its own first region) and labels, cached: rendering
        the chat template and tokenizing cost more than a tiny LLM's step, and training meets each conversation
        again every epoch."""
        cached = self._rows.get(conversation)
        if cached is not None:
            self._rows.move_to_end(conversation)
            return cached
        ids: list[int] = []
        slots: list[int] = []
        labels: list[int] = []
        for text, is_answer in self.pieces(conversation):
            piece_ids, piece_slots = (
                (self._ids(text), None) if is_answer else self._prompt_ids(text, 0, self.projector.tokens_per_region)
            )
            ids += piece_ids
            slots += piece_slots or [-1] * len(piece_ids)
            labels += piece_ids if is_answer else [IGNORE_INDEX] * len(piece_ids)
        self._rows[conversation] = (ids, slots, labels)
        if len(self._rows) > _ENCODED_ROWS_KEPT:
            self._rows.popitem(last=False)
        return ids, slots, labels

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _prompt_ids(self, text: str, offset: int, tokens_per_region: int) -> tuple[list[int], list[int]]:
        """A prompt piece's token ids with `tokens_per_region` slots for each region tag."""
        ids: list[int] = []
        slots: list[int] = []
        start = 0
        for match in REGION_TAG.finditer(text):
            words = self._ids(text[start : match.start()])
            ids += words
            slots += [-1] * len(words)
            first = offset + (int(match.group(1)) - 1) * tokens_per_region
            ids += [self.pad_id] * tokens_per_region  # placeholders: their embeddings are replaced
            slots += list(range(first, first + tokens_per_region))
            start = match.end()
        words = self._ids(text[start:])
        return ids + words, slots + [-1] * len(words)

    # ----- the LLM ------------------------------------------------------------------------------------------------
    def input_embeddings(self, encoded: EncodedConversations, region_conditions: torch.Tensor) -> torch.Tensor:
        """(B, L, H) the LLM's input embeddings with every region slot holding its projected region.

        Args:
            encoded: from `encode`.
            region_conditions: (R, D) every region of the batch, conversation by conversation, in tag order.
        """
        embed = self.llm.get_input_embeddings()
        text = embed(encoded.input_ids.to(embed.weight.device))  # (B, L, H)
        regions = self.projector(region_conditions.to(text.device)).flatten(0, 1).to(text.dtype)  # (R * T, H)
        slots = encoded.region_slots.to(text.device)
        if slots.max() >= len(regions):
            raise ValueError(f"the prompts name {int(slots.max()) + 1} region tokens but {len(regions)} were given")
        placed = regions[slots.clamp(min=0)]  # (B, L, H)
        return torch.where((slots >= 0)[..., None], placed, text)

    def loss(self, conversations: Sequence[Sequence[Turn]], region_conditions: Sequence[torch.Tensor]) -> torch.Tensor:
        """Mean next-token cross-entropy over the answers' tokens of B conversations.

        Args:
            conversations: B lists of (question, answer) turns.
            region_conditions: B tensors (R_i, D), the regions each conversation's tags name, in tag order.
        """
        encoded = self.encode(conversations, [len(c) for c in region_conditions], padding_side="right")
        embeddings = self.input_embeddings(encoded, torch.cat(list(region_conditions)))
        mask = encoded.attention_mask.to(embeddings.device)
        logits = self.llm(inputs_embeds=embeddings, attention_mask=mask).logits  # (B, L, V)
        labels = encoded.labels.to(logits.device)
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)

    @torch.no_grad()
    def generate(
        self,
        conversations: Sequence[Sequence[Turn]],
        region_conditions: Sequence[torch.Tensor],
        *,
        max_new_tokens: int | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
    ) -> list[str]:
        """The LLM's answer to the last (open) question of each of B conversations, decoded together with the
        LLM's own `generate` (greedy by default; sampling with `do_sample`)."""
        encoded = self.encode(conversations, [len(c) for c in region_conditions], padding_side="left")
        embeddings = self.input_embeddings(encoded, torch.cat(list(region_conditions)))
        sampling = {"temperature": temperature, "top_p": top_p} if do_sample else {}
        was_training = self.training
        self.eval()
        try:
            new_tokens = self.llm.generate(
                inputs_embeds=embeddings,
                attention_mask=encoded.attention_mask.to(embeddings.device),
                max_new_tokens=max_new_tokens or self.max_new_tokens,
                do_sample=do_sample,
                pad_token_id=self.pad_id,
                **sampling,
            )
        finally:
            self.train(was_training)
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def _continuation(longer: str, prefix: str) -> str:
    if not longer.startswith(prefix):
        raise ValueError(
            "the tokenizer's chat template renders a conversation differently once it goes on (its earlier turns "
            "are not a prefix of the longer rendering), so answer tokens cannot be told apart from prompt tokens"
        )
    return longer[len(prefix) :]


def _check_conversation(conversation: Sequence[Turn], regions: int, *, open_end: bool) -> None:
    if not conversation:
        raise ValueError("a conversation needs at least one question")
    for index, (question, answer) in enumerate(conversation):
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"turn {index + 1}: the question is empty; ask something, e.g. 'what is <region1>?'")
        last = index == len(conversation) - 1
        if (answer is None) != (open_end and last):
            raise ValueError(
                "a conversation to answer must end in an open question (answer None) and have answers before it"
                if open_end
                else f"turn {index + 1} has no answer to learn from"
            )
        for match in REGION_TAG.finditer(question):
            named = int(match.group(1))
            if not 1 <= named <= regions:
                raise ValueError(
                    f"the question names <region{named}> but {regions} region(s) were given "
                    f"(tags count from <region1>): {question!r}"
                )


def _pad(rows: list[tuple[list[int], list[int], list[int]]], *, pad_id: int, side: str) -> EncodedConversations:
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
    length = max(len(ids) for ids, _, _ in rows)
    columns: list[list[list[int]]] = [[], [], [], []]
    for ids, slots, labels in rows:
        fill = length - len(ids)
        for column, values, pad in zip(
            columns, (ids, [1] * len(ids), slots, labels), (pad_id, 0, -1, IGNORE_INDEX), strict=True
        ):
            column.append([pad] * fill + values if side == "left" else values + [pad] * fill)
    ids, mask, slots, labels = (torch.tensor(column, dtype=torch.long) for column in columns)
    return EncodedConversations(input_ids=ids, attention_mask=mask, region_slots=slots, labels=labels)
