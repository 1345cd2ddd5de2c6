"""``difflab serve``: the web UI (:mod:`.app`, Gradio) over a plain Python API (:mod:`.studio`)
and safe uploads (:mod:`.uploads`). docs/ui.md."""
