# RDS Proxy in front of the database: TLS required, IAM auth required from clients, the secret for
# the database. Its default target group's pool settings are what the local emulator follows.

data "aws_iam_policy_document" "proxy_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["rds.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "proxy" {
  name_prefix        = "${local.name}-proxy-"
  assume_role_policy = data.aws_iam_policy_document.proxy_assume.json
}

resource "aws_iam_role_policy" "proxy_secret" {
  name   = "read-db-secret"
  role   = aws_iam_role.proxy.id
  policy = data.aws_iam_policy_document.read_db_secret.json
}

resource "aws_db_proxy" "this" {
  name                   = "${local.name}-proxy"
  engine_family          = "POSTGRESQL"
  role_arn               = aws_iam_role.proxy.arn
  vpc_subnet_ids         = aws_subnet.private[*].id
  vpc_security_group_ids = [aws_security_group.proxy.id]
  require_tls            = var.proxy_require_tls
  idle_client_timeout    = var.proxy_idle_client_timeout
  debug_logging          = var.proxy_debug_logging

  auth {
    auth_scheme               = "SECRETS"
    iam_auth                  = var.proxy_iam_auth
    client_password_auth_type = "POSTGRES_SCRAM_SHA_256"
    secret_arn                = aws_secretsmanager_secret.db.arn
    description               = "The database user of the Lambda function"
  }

  depends_on = [aws_iam_role_policy.proxy_secret, aws_secretsmanager_secret_version.db]
}

resource "aws_db_proxy_default_target_group" "this" {
  db_proxy_name = aws_db_proxy.this.name

  connection_pool_config {
    connection_borrow_timeout    = var.proxy_connection_borrow_timeout
    max_connections_percent      = var.proxy_max_connections_percent
    max_idle_connections_percent = coalesce(var.proxy_max_idle_connections_percent, floor(var.proxy_max_connections_percent / 2))
    init_query                   = var.proxy_init_query
  }
}

resource "aws_db_proxy_target" "this" {
  db_proxy_name          = aws_db_proxy.this.name
  target_group_name      = aws_db_proxy_default_target_group.this.name
  db_instance_identifier = aws_db_instance.this.identifier
}
