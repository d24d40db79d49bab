"""EEM maths (Explainable Error Map, SegXAL arXiv 2408.04482; docs/design.md, "The EEM as shipped").

Pure functions, arrays in and arrays out, one module per concept; import from the module:
- segxal.eem.ebu: entropy-based uncertainty (torch, traceable to ONNX)
- segxal.eem.gradcam: class-agnostic GradCAM, autograd reference and analytic fast path (torch)
- segxal.eem.explain: ExplainedSegmenter, the one forward pass the ONNX export and the AL loop share
- segxal.eem.proximity: depth -> proximity in [0, 1] (numpy)
- segxal.eem.fuse: PAE, EEM, frame score (numpy)
- segxal.eem.regions: threshold, connected components, polygons, COCO RLE (numpy, scipy, cv2)

Nothing is re-exported here, so a numpy-only consumer (the EEM scoring service reading ONNX
outputs) does not import torch by importing segxal.eem.fuse.
"""
