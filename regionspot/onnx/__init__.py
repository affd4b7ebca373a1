"""RegionSpot without torch: ONNX graphs exported by `regionspot.onnx.export` (which needs torch), run by
`OnnxRegionPredictor` (which needs only onnxruntime, numpy, Pillow and tokenizers: `pip install regionspot[onnx]`)."""

from regionspot.onnx.predictor import OnnxRegionPredictor

__all__ = ["OnnxRegionPredictor"]
