"""The torch modules that `regionspot.onnx.export` traces into ONNX graphs, each a thin view of the model's own parts.

Every graph calls the package's own code (SAM's preprocessing and decoder, `ClipBackbone.feature_map` and
`encode_prompt_tokens`, the adapter, `RegionSpot.classify`, `SamRegionEncoder.upscale_masks`,
`mask_prompt_logits`, `region_condition_rows`); sizes that vary per image are inputs, so that one graph serves
every image and any number of regions. Prompts reach the decoder as SAM's own ONNX export takes them
(`segment_anything.utils.onnx`): points with labels, box corners as points labelled 2 and 3, a padding point
labelled -1, and a mask input with a flag saying whether it is used.
"""

from __future__ import annotations

import torch
from segment_anything.utils.onnx import SamOnnxModel
from torch import nn

from regionspot.modeling.caption_decoder import CaptionDecoder
from regionspot.modeling.preprocess import resize_for_clip
from regionspot.modeling.region_projector import RegionProjector
from regionspot.modeling.regionspot import _FEATURE_NORM_EPS, RegionSpot, region_condition_rows
from regionspot.transforms import mask_prompt_logits


class ImageGraph(nn.Module):
    """(1, 3, h, w) uint8 image resized for SAM + (1, 3, H, W) uint8 image as given -> SAM's image embedding
    (1, C, e, e) and CLIP's token map (1, L, D): the costly part, once per image."""

    def __init__(self, model: RegionSpot) -> None:
        super().__init__()
        self.model = model

    def forward(self, sam_pixels: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sam, clip = self.model.sam, self.model.clip
        embedding = sam.embed_images(sam.sam.preprocess(sam_pixels))
        clip_pixels = resize_for_clip(image, clip.image_size, mode=clip.resize)
        return embedding.float(), clip.feature_map(clip.normalize(clip_pixels)).float()


class DecoderGraph(nn.Module):
    """SAM's prompt encoder and mask decoder over n regions of one image -> region tokens (n, T, C), mask scores
    (n, T) and low-resolution mask logits (n, T, 4e, 4e): SAM's own decoder, each region with its own image embedding.

    Inputs: image_embedding (1, C, e, e); point_coords (n, P, 2) in SAM's input frame; point_labels (n, P) as SAM's
    ONNX export labels them; mask_input (n, 1, 4e, 4e) logits; has_mask_input (1,) 1.0 to use them, else 0.0.
    """

    def __init__(self, model: RegionSpot) -> None:
        super().__init__()
        self.encoder = model.sam
        self.prompts = SamOnnxModel(model.sam.sam, return_single_mask=False)  # SAM's own ONNX prompt embedding

    def forward(self, image_embedding, point_coords, point_labels, mask_input, has_mask_input):
        sparse = self.prompts._embed_points(point_coords, point_labels)
        dense = self.prompts._embed_masks(mask_input, has_mask_input)
        src = image_embedding + dense  # (n, C, e, e): each region's own image embedding, as the torch path adds it
        return self.encoder._decode_with_masks(src, self.encoder.sam.prompt_encoder.get_dense_pe(), sparse)


class TokensGraph(nn.Module):
    """Region tokens (n, T, C) and mask scores (n, T) of n regions of one image prompted without masks, as the
    torch path decodes tokens only (`SamRegionEncoder.decode(..., with_masks=False)`): the image side of the first
    two-way block computed once for all regions, no mask upscaling or hypernetworks.

    Inputs: image_embedding (1, C, e, e); point_coords (n, P, 2) and point_labels (n, P) as `DecoderGraph`'s.
    """

    def __init__(self, model: RegionSpot) -> None:
        super().__init__()
        self.encoder = model.sam
        self.prompts = SamOnnxModel(model.sam.sam, return_single_mask=False)

    def forward(self, image_embedding, point_coords, point_labels):
        sparse = self.prompts._embed_points(point_coords, point_labels)
        shared = self.encoder._image_side(image_embedding)
        return self.encoder._decode_tokens(shared, (0,), (sparse.shape[0],), sparse)


class PointMasksGraph(nn.Module):
    """SAM's decoder as its automatic mask generator calls it (`SamPredictor.predict_torch`, multimask output, one
    point per region): image_embedding (1, C, e, e), point_coords (n, P, 2) in SAM's input frame, point_labels
    (n, P), input_size and original_size (2,) int64 -> mask logits (n, 3, H, W) at the image's size (not
    thresholded: the generator's stability score needs them) and SAM's predicted IoU (n, 3)."""

    def __init__(self, model: RegionSpot) -> None:
        super().__init__()
        self.sam = model.sam.sam
        self.prompts = SamOnnxModel(model.sam.sam, return_single_mask=False)

    def forward(self, image_embedding, point_coords, point_labels, input_size, original_size):
        sparse = self.prompts._embed_points(point_coords, point_labels)
        dense = self.sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        logits, scores = self.sam.mask_decoder.predict_masks(
            image_embeddings=image_embedding,
            image_pe=self.sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )
        logits = self.sam.postprocess_masks(
            logits[:, 1:], (input_size[0], input_size[1]), (original_size[0], original_size[1])
        )
        return logits, scores[:, 1:]


class AdapterGraph(nn.Module):
    """(1, Q, C) region tokens of one image + its (1, L, D) CLIP token map -> (1, Q, E) unit-norm region features:
    `RegionSpot.region_features` for one image (the regions attend to each other, so all of them go at once)."""

    def __init__(self, model: RegionSpot) -> None:
        super().__init__()
        self.adapter = model.adapter

    def forward(self, region_tokens: torch.Tensor, clip_tokens: torch.Tensor) -> torch.Tensor:
        fused = self.adapter(region_tokens, clip_tokens).float()
        return fused / (fused.norm(dim=-1, keepdim=True) + _FEATURE_NORM_EPS)


class TextGraph(nn.Module):
    """(C, K, L) int64 token ids of C names' K prompts -> (C, E) unit-norm class embeddings
    (`ClipBackbone.encode_prompt_tokens`: CLIP's text tower and RegionSpot's prompt averaging)."""

    def __init__(self, model: RegionSpot) -> None:
        super().__init__()
        self.clip = model.clip

    def forward(self, text_tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_prompt_tokens(text_tokens)


class ScoreGraph(nn.Module):
    """(N, E) region features x (C, E) class embeddings -> logits, softmax and sigmoid scores (N, C)
    (`RegionSpot.classify`: cosine x CLIP's logit scale)."""

    def __init__(self, model: RegionSpot) -> None:
        super().__init__()
        self.model = model

    def forward(self, region_features: torch.Tensor, class_embeddings: torch.Tensor):
        logits = self.model.classify(region_features, class_embeddings)
        return logits, logits.softmax(-1), logits.sigmoid()


class MaskGraph(nn.Module):
    """(N, 1, 4e, 4e) mask logits -> (N, H, W) bool masks at the image's size (`SamRegionEncoder.upscale_masks`).

    Inputs besides the logits: input_size (2,) int64, the (h, w) of the image in SAM's square; original_size (2,)
    int64, the image's (H, W)."""

    def __init__(self, model: RegionSpot) -> None:
        super().__init__()
        self.encoder = model.sam

    def forward(self, mask_logits, input_size, original_size):
        masks = self.encoder.upscale_masks(
            mask_logits, (input_size[0], input_size[1]), (original_size[0], original_size[1])
        )
        return masks[:, 0]


class MaskPromptGraph(nn.Module):
    """(N, H, W) float binary masks + input_size (2,) int64 -> (N, 1, 4e, 4e) SAM mask-input logits
    (`regionspot.transforms.mask_prompt_logits`)."""

    def __init__(self, model: RegionSpot) -> None:
        super().__init__()
        self.encoder = model.sam

    def forward(self, masks: torch.Tensor, input_size: torch.Tensor) -> torch.Tensor:
        return mask_prompt_logits(self.encoder, masks, resized=(input_size[0], input_size[1]))


class ConditionGraph(nn.Module):
    """What the captioner and the VQA projector read of N regions (`region_condition_rows`, as
    `RegionSpot.region_condition` computes it): region_features (N, T, E), region_tokens (N, T, C), mask_scores
    (N, T) and region_boxes (N, 4), each region's extent as fractions of the image (`regionspot.extents`) ->
    condition (N, E + C + 4)."""

    def forward(self, region_features, region_tokens, mask_scores, region_boxes):
        return region_condition_rows(region_features, region_tokens, mask_scores, region_boxes)


class CaptionStepGraph(nn.Module):
    """One step of the captioner's decoding, without a key-value cache: condition (N, D) + tokens so far (N, L) int64,
    BOS first -> (N, V) logits of the next token (`CaptionDecoder.forward`'s last position). Greedy decoding calls
    it once per token (`regionspot.onnx.caption`)."""

    def __init__(self, decoder: CaptionDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, condition: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder(condition, tokens)[:, -1].float()


class ProjectorGraph(nn.Module):
    """The VQA head's region projector (in evaluation: its running statistics): (R, D) region conditions -> (R, T, H)
    LLM input embeddings (`RegionProjector.forward`). The LLM that reads them stays a Hugging Face model."""

    def __init__(self, projector: RegionProjector) -> None:
        super().__init__()
        self.projector = projector

    def forward(self, conditions: torch.Tensor) -> torch.Tensor:
        return self.projector(conditions).float()
