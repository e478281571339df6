"""What a trained model does on a data set, for people: evaluation of a saved model on a split
(`evaluation`, the core of sft.evaluate and sft.report) and the error-analysis page, report.html
(`page`)."""
