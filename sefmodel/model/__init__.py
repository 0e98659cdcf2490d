"""The detectors: the SEF detector (:mod:`.detector`) and its config, backbones, LoRA experts, fusion heads,
spectrum feature and image processor; the detector folder (:mod:`.folder`), loading any kind of it
(:mod:`.serialization`) and combining experts (:mod:`.combine`); the training-free AEROBLADE detector and its
distances. The model imports none of the code that scores, combines or saves it (tests/test_import_cycles.py)."""
