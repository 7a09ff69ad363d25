# The database credentials, as RDS Proxy reads them: {"username": ..., "password": ...}.
#
# Secrets Manager generates the password; the secret version and the instance take it through
# write-only arguments, sent only when db_password_version changes. The data source's result is in
# the state (marked sensitive): the ephemeral resource of the same name would keep it out, but
# Terraform 1.11's `terraform test` mock provider cannot mock ephemeral resources.

data "aws_secretsmanager_random_password" "db" {
  password_length     = 32
  exclude_punctuation = true
}

resource "aws_secretsmanager_secret" "db" {
  name_prefix             = "${local.name}-db-credentials-"
  description             = "Database credentials RDS Proxy logs in with"
  recovery_window_in_days = 0
}

resource "aws_secretsmanager_secret_version" "db" {
  secret_id = aws_secretsmanager_secret.db.id
  secret_string_wo = jsonencode({
    username = var.db_username
    password = data.aws_secretsmanager_random_password.db.random_password
  })
  secret_string_wo_version = var.db_password_version
}

# What reading the secret takes: the proxy's role has it, and the function's when it logs in with the
# password (IAM auth DISABLED).
data "aws_iam_policy_document" "read_db_secret" {
  statement {
    sid       = "ReadTheDatabaseSecret"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [aws_secretsmanager_secret.db.arn]
  }
  statement {
    sid       = "DecryptItThroughSecretsManager"
    actions   = ["kms:Decrypt"]
    resources = ["*"]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${var.region}.amazonaws.com"]
    }
  }
}
