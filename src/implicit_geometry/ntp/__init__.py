"""Next-token prediction: corpus statistics, the predicted geometry (L*, the NTP-SVM L_mm), the log-bilinear
model, and measurements of trained language models (theory.md section 6)."""
