# The orders service in AWS: its function reaches PostgreSQL through RDS Proxy with IAM auth.
# Written for AWS; the local twin applies it unchanged to its AWS API emulator.

terraform {
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.80, < 6.0"
    }
  }
}

provider "aws" {
  region = var.aws_region
}

variable "aws_region" {
  type    = string
  default = "us-east-1"
}

variable "service" {
  description = "Prefix of every name."
  type        = string
  default     = "orders"
}

variable "admin_password" {
  description = "The instance's master password (pass a real one, e.g. TF_VAR_admin_password, in AWS)."
  type        = string
  sensitive   = true
  default     = "only-for-local-runs"
}

variable "app_password" {
  description = "The application role's password, kept in the proxy's secret."
  type        = string
  sensitive   = true
  default     = "only-for-local-runs-too"
}

variable "function_zip" {
  description = "The function's deployment package."
  type        = string
}

data "aws_vpc" "default" {
  default = true
}

data "aws_subnets" "default" {
  filter {
    name   = "vpc-id"
    values = [data.aws_vpc.default.id]
  }
}

resource "aws_db_instance" "orders" {
  identifier                          = "${var.service}-db"
  engine                              = "postgres"
  engine_version                      = "16"
  instance_class                      = "db.t4g.micro"
  allocated_storage                   = 20
  db_name                             = "orders"
  username                            = "orders_admin"
  password                            = var.admin_password
  iam_database_authentication_enabled = true
  skip_final_snapshot                 = true
}

resource "aws_secretsmanager_secret" "db" {
  name_prefix = "${var.service}-db-"
}

resource "aws_secretsmanager_secret_version" "db" {
  secret_id     = aws_secretsmanager_secret.db.id
  secret_string = jsonencode({ username = "orders_app", password = var.app_password })
}

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
  name_prefix        = "${var.service}-proxy-"
  assume_role_policy = data.aws_iam_policy_document.proxy_assume.json
}

resource "aws_db_proxy" "orders" {
  name           = "${var.service}-proxy"
  engine_family  = "POSTGRESQL"
  role_arn       = aws_iam_role.proxy.arn
  vpc_subnet_ids = data.aws_subnets.default.ids
  require_tls    = true

  auth {
    auth_scheme = "SECRETS"
    iam_auth    = "REQUIRED"
    secret_arn  = aws_secretsmanager_secret.db.arn
  }
}

resource "aws_db_proxy_default_target_group" "orders" {
  db_proxy_name = aws_db_proxy.orders.name

  connection_pool_config {
    max_connections_percent = 50
  }
}

resource "aws_db_proxy_target" "orders" {
  db_proxy_name          = aws_db_proxy.orders.name
  target_group_name      = aws_db_proxy_default_target_group.orders.name
  db_instance_identifier = aws_db_instance.orders.identifier
}

data "aws_iam_policy_document" "lambda_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "function" {
  name_prefix        = "${var.service}-fn-"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
}

resource "aws_lambda_function" "orders" {
  function_name    = "${var.service}-api"
  role             = aws_iam_role.function.arn
  runtime          = "python3.12"
  handler          = "orders.handler"
  filename         = var.function_zip
  source_code_hash = filebase64sha256(var.function_zip)
  timeout          = 15

  environment {
    variables = {
      DB_HOST = aws_db_proxy.orders.endpoint
      DB_PORT = "5432"
      DB_NAME = aws_db_instance.orders.db_name
      DB_USER = "orders_app"
    }
  }
}

output "orders_function" {
  value = aws_lambda_function.orders.function_name
}

output "database_proxy_host" {
  value = aws_db_proxy.orders.endpoint
}
