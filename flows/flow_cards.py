"""Render the stages' report items (libs.report) as Metaflow card components.

Every string that reaches a card goes through here: Markdown texts and titles pass through
``libs.report.safe_markdown`` (no raw HTML, no script links: a model or file name carrying
markup shows as text and runs nothing), table headers and cells are plain text components.
"""

from __future__ import annotations

from metaflow import current
from metaflow.cards import Image, Markdown, Table


def render(items, card_id: str | None = None) -> None:
    """Append a stage's report (Markdown / Table / Figure items) to the step's card."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from libs import report
    from libs.report import safe_markdown

    card = current.card[card_id] if card_id else current.card
    for item in items:
        if isinstance(item, report.Markdown):
            card.append(Markdown(safe_markdown(item.text)))
        elif isinstance(item, report.Table):
            if item.title:
                card.append(Markdown(f"### {safe_markdown(item.title)}"))
            card.append(Table([[str(v) for v in row] for row in item.rows], headers=[str(h) for h in item.headers]))
        elif isinstance(item, report.Figure):
            if item.title:
                card.append(Markdown(f"### {safe_markdown(item.title)}"))
            card.append(Image.from_matplotlib(item.figure))
            plt.close(item.figure)
        else:
            raise TypeError(f"cannot render report item {item!r}")


class LiveLossCard:
    """A card that redraws the loss curve at every evaluation while a step trains.

    Pass ``LiveLossCard(title)`` as the training loop's ``on_eval`` callback; the step
    needs ``@card(type="blank", id="live", refresh_interval=...)``.
    """

    def __init__(self, title: str, card_id: str = "live"):
        self.title, self.card_id = title, card_id
        self.curve: list[dict] = []
        self._text = self._image = None

    def __call__(self, step, model, record) -> None:
        import matplotlib.pyplot as plt

        from libs.report import loss_curve_figure, safe_markdown

        self.curve.append(dict(record))
        fig = loss_curve_figure(self.curve, self.title, train_label="training")
        text = safe_markdown(f"**{self.title}** (live): step {record['step']}, validation loss "
                             f"{record['val_loss']:.4f}, training loss {record['train_eval_loss']:.4f}, "
                             f"lr {record['lr']:.2e}")
        card = current.card[self.card_id]
        if self._image is None:
            self._text, self._image = Markdown(text), Image.from_matplotlib(fig)
            card.append(self._text)
            card.append(self._image)
        else:
            self._text.update(text)
            self._image.update(fig)
        plt.close(fig)
        card.refresh()
