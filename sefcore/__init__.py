"""What both halves of the toolkit use: errors (:mod:`sefcore.errors`), the one image-decoding rule
(:mod:`sefcore.imageio`), which files are images (:mod:`sefcore.imagefiles`), Hugging Face Hub access and weight
files (:mod:`sefcore.hub`), path privacy (:mod:`sefcore.privacy`), config field docs (:mod:`sefcore.fields`), Markdown
tables (:mod:`sefcore.markdown`) and the TOML reader (:mod:`sefcore.tomlfile`).

``sefdata`` (building datasets) and ``sefmodel`` (detectors) both import it; it imports neither."""
