"""Facts about the Criteo Display Advertising Challenge (Kaggle) data set."""

NUM_DENSE = 13
NUM_CATEGORICAL = 26
DENSE_NAMES = [f"I{j}" for j in range(1, NUM_DENSE + 1)]
CATEGORICAL_NAMES = [f"C{j}" for j in range(1, NUM_CATEGORICAL + 1)]

# Distinct values of C1..C26 in the full 45,840,617-line Kaggle train.txt (33,762,577 in all).
KAGGLE_CARDINALITIES = [
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
]
KAGGLE_LINES = 45_840_617
