"""The digits experiment (issue 17, seeds 001 and 002): does adding refined synthetic digits to a
few real ones improve a classifier on real handwriting?

``fonts`` renders synthetic digits, ``mnist`` loads real ones, ``classifier`` is the small CNN,
``experiment`` runs the arms (real, real + synthetic, real + refined, synthetic, refined) over
real-set sizes and seeds with the project's refiner, and writes the report.
"""
