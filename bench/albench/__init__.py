"""The label-efficiency benchmark harness (bench/al_curve.py runs it): protocols and arms
(`harness`), statistics (`stats`), tables and plots (`report`). It calls the product's library code
in segxal/ (acquisition maps in segxal.al.strategies, selection in segxal.selection, EEM maths in
segxal.eem) and is never imported by it."""
