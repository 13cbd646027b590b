"""What every route shares: the error a request ends with, the JSON handler base, the metrics."""
