"""The built-in default, end to end on a CPU: data -> stand-in backbones -> train.py -> evaluate.py -> picture.

    {prog}                   # everything into outputs/demo (times: docs/demo.md)
    {prog} --out /tmp/demo --quick

1. `regionspot.demo.synthetic` draws a seeded LVIS-format data set of coloured, textured shapes, with
   rare/common/frequent classes and classes held out of training, a caption per object of what it drew, and
   questions about each image's objects.
2. No real SAM, CLIP or LLM weights can be downloaded here, so `regionspot.demo.backbones` fits a tiny SAM and
   a tiny CLIP as stand-ins for the foundation models, on a class-balanced pretraining split of all the classes,
   as web-pretrained CLIP has seen LVIS's rare ones (from then on they are frozen), and
   `regionspot.demo.language_model` writes a tiny random Llama.
3. The adapter, the caption decoder and the VQA head (the tiny LLM, trained in full, and its region projector) train
   together through the LightningCLI that `train.py` runs (the packaged `demo` training config) on the class-
   balanced pretraining split with the held-out classes' annotations removed (as open-vocabulary LVIS removes the
   novel ones), so that no held-out name is ever trained: focal loss and a softmax cross-entropy for names, next-
   token losses for captions and answers, the question batches mixed in among the detection batches. Unlike
   RegionSpot's, the demo's adapter reads only the CLIP tokens of each region's box (`adapter.box_attention`): in
   its 2500 CPU steps it does not learn where to look on its own; and ViLD's distillation pulls its features towards
   CLIP's own embedding of each box (`model.distill_loss_weight`), which keeps what CLIP knows of the held-out names
   that the naming losses never train. Beside it, on the other core, the blind baseline (`regionspot.demo.vqa`)
   trains through train.py too: the same configs and question steps, on the same conversations with nothing to
   look at (every region the whole of one grey image).
4. The runner that `evaluate.py` runs classifies every ground-truth box of the test split over the whole
   vocabulary (seen and held-out names) and scores it with the official LVIS API. AP is also reported on
   the classes seen in training and on the held-out ones, next to chance: the same protocol fed random
   class probabilities.
5. `evaluate.py captions` captions every test box and scores it with pycocoevalcap (CIDEr-D, BLEU-4, METEOR,
   ROUGE-L), next to two baselines (`regionspot.demo.captioning`), with attribute words on held-out classes.
6. `evaluate.py vqa` answers every test question, scored by question type next to the blind LM (asked through
   `evaluate.py vqa` on its grey images) and the majority answer.
7. `RegionSpotPredictor.predict_everything`, at its defaults, segments test images with SAM's automatic mask
   generator (its published thresholds, on the stand-in SAM) and names every mask; scored as the objects found
   (box IoU >= 0.5), those named right, and the extra regions per image (docs/demo.md, "Segment everything").
8. `demo.png` shows test images with each box's predicted label, score and caption.
"""
