# The function: in the VPC, allowed to connect to the proxy as the database user with an IAM token;
# with the proxy's IAM auth DISABLED, allowed to read the secret's password instead (through the
# Secrets Manager endpoint in vpc.tf: the private subnets have no other way out).

data "aws_iam_policy_document" "lambda_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "lambda" {
  name_prefix        = "${local.name}-fn-"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
}

resource "aws_iam_role_policy_attachment" "lambda_vpc" {
  role       = aws_iam_role.lambda.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"
}

locals {
  # The proxy's resource id (prx-...) is the last part of its ARN; rds-db:connect names it, not the
  # proxy's name: arn:aws:rds-db:REGION:ACCOUNT:dbuser:prx-ID/USER.
  proxy_resource_id = element(split(":", aws_db_proxy.this.arn), 6)
  proxy_dbuser_arn = format(
    "arn:%s:rds-db:%s:%s:dbuser:%s/%s",
    data.aws_partition.current.partition,
    var.region,
    data.aws_caller_identity.current.account_id,
    local.proxy_resource_id,
    var.db_username,
  )
}

data "aws_iam_policy_document" "lambda_connect" {
  statement {
    sid       = "ConnectToTheProxyAsTheDatabaseUser"
    actions   = ["rds-db:connect"]
    resources = [local.proxy_dbuser_arn]
  }
}

resource "aws_iam_role_policy" "lambda_connect" {
  name   = "rds-db-connect"
  role   = aws_iam_role.lambda.id
  policy = data.aws_iam_policy_document.lambda_connect.json
}

locals {
  # Without IAM auth the function logs in with the secret's password (DB_AUTH=secret).
  lambda_reads_secret = var.proxy_iam_auth == "DISABLED"
}

resource "aws_iam_role_policy" "lambda_secret" {
  count = local.lambda_reads_secret ? 1 : 0

  name   = "read-db-secret"
  role   = aws_iam_role.lambda.id
  policy = data.aws_iam_policy_document.read_db_secret.json
}

resource "aws_lambda_function" "this" {
  function_name                  = "${local.name}-fn"
  role                           = aws_iam_role.lambda.arn
  runtime                        = var.lambda_runtime
  handler                        = "index.handler"
  filename                       = var.lambda_package
  source_code_hash               = filebase64sha256(var.lambda_package)
  timeout                        = var.lambda_timeout
  memory_size                    = var.lambda_memory_size
  reserved_concurrent_executions = var.lambda_reserved_concurrency
  architectures                  = ["x86_64"]

  vpc_config {
    subnet_ids         = aws_subnet.private[*].id
    security_group_ids = [aws_security_group.lambda.id]
  }

  environment {
    variables = {
      DB_PROXY_ENDPOINT = aws_db_proxy.this.endpoint
      DB_PORT           = "5432"
      DB_NAME           = var.db_name
      DB_USER           = var.db_username
      DB_AUTH           = local.lambda_reads_secret ? "secret" : "iam"
      DB_SECRET_ARN     = aws_secretsmanager_secret.db.arn
      DB_SSLMODE        = "require"
    }
  }

  depends_on = [
    aws_iam_role_policy_attachment.lambda_vpc,
    aws_iam_role_policy.lambda_connect,
    aws_iam_role_policy.lambda_secret,
    aws_vpc_endpoint.secretsmanager,
    aws_vpc_security_group_egress_rule.lambda_to_endpoints,
    aws_vpc_security_group_ingress_rule.endpoints_from_lambda,
  ]
}

# The stage's probe: the same package, role and network, another entry point. The proxy is private,
# so the real-AWS stage reaches it from inside the VPC through this function.
resource "aws_lambda_function" "probe" {
  count = var.stage_probe ? 1 : 0

  function_name    = "${local.name}-probe"
  role             = aws_iam_role.lambda.arn
  runtime          = var.lambda_runtime
  handler          = "probe.handler"
  filename         = var.lambda_package
  source_code_hash = filebase64sha256(var.lambda_package)
  timeout          = 120
  memory_size      = var.lambda_memory_size
  architectures    = ["x86_64"]

  vpc_config {
    subnet_ids         = aws_subnet.private[*].id
    security_group_ids = [aws_security_group.lambda.id]
  }

  # The function's environment: the probe comes after the function, and so after everything the
  # function waits for (its permissions, the endpoint and its rules).
  environment {
    variables = aws_lambda_function.this.environment[0].variables
  }
}
