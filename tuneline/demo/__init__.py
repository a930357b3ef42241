"""``tuneline demo``: the whole platform on real data, driven by its own events.

:mod:`tuneline.demo.corpus` cuts the Rotten Tomatoes corpus into a held-out evaluation set and
three dataset versions (first, grown, label-flipped); :mod:`tuneline.demo.timeline` follows every
Tuneline event on the broker; :mod:`tuneline.demo.scenario` plays the story against a running
stack through the client SDK and reports what happened. The CLI command (``tuneline demo``) and
the cross-process test drive the same scenario with different sizes.
"""
