"""DKIM corpus: messages built by real libraries (Python email, nodemailer) and verifiers."""
