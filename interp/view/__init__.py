"""`interp view`: an offline, interactive explorer of a run, an analysis or a checkpoint suite over training.

    from interp.view import write_view
    page = write_view("runs/induction")          # runs/induction/view/index.html

One checkpoint slider (arrow keys move it; phase changes are marked on it) drives every
view: logged metrics and probe columns with a cursor, the layer x head grid of any
per-head probe with the attention pattern of a clicked head on an example sequence,
the circuit graph of the step (saved graphs, else attention metrics) with a diff
between two steps, two steps side by side, and each analysis's headline panel.

    from interp.view import show
    show("runs/induction")                       # the same page inline in a Jupyter notebook
"""

from interp.headline import Source
from interp.view.data import ViewError, open_source
from interp.view.notebook import NotebookView, show
from interp.view.page import INDEX, VIEW_DIR, render_page, view_data, write_view
from interp.view.patterns import Example, example_for, example_patterns, pattern_scores

__all__ = ["INDEX", "VIEW_DIR", "Example", "Source", "ViewError", "example_for", "example_patterns", "open_source",
           "pattern_scores", "render_page", "view_data", "write_view"]
__all__ += ["NotebookView", "show"]
