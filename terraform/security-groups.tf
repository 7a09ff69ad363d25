# Lambda -> proxy -> database, on 5432 only; with IAM auth DISABLED, Lambda -> the Secrets Manager
# endpoint on 443 as well.

resource "aws_security_group" "lambda" {
  name        = "${local.name}-lambda"
  description = "The Lambda function: reaches the proxy only"
  vpc_id      = aws_vpc.this.id
}

resource "aws_security_group" "proxy" {
  name        = "${local.name}-proxy"
  description = "RDS Proxy: from the Lambda function, to the database"
  vpc_id      = aws_vpc.this.id
}

resource "aws_security_group" "db" {
  name        = "${local.name}-db"
  description = "RDS PostgreSQL: from the proxy only"
  vpc_id      = aws_vpc.this.id
}

resource "aws_vpc_security_group_egress_rule" "lambda_to_proxy" {
  security_group_id            = aws_security_group.lambda.id
  referenced_security_group_id = aws_security_group.proxy.id
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  description                  = "PostgreSQL to RDS Proxy"
}

resource "aws_vpc_security_group_ingress_rule" "proxy_from_lambda" {
  security_group_id            = aws_security_group.proxy.id
  referenced_security_group_id = aws_security_group.lambda.id
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  description                  = "PostgreSQL from the Lambda function"
}

resource "aws_vpc_security_group_egress_rule" "proxy_to_db" {
  security_group_id            = aws_security_group.proxy.id
  referenced_security_group_id = aws_security_group.db.id
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  description                  = "PostgreSQL to the database"
}

resource "aws_vpc_security_group_ingress_rule" "db_from_proxy" {
  security_group_id            = aws_security_group.db.id
  referenced_security_group_id = aws_security_group.proxy.id
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  description                  = "PostgreSQL from RDS Proxy"
}

resource "aws_security_group" "endpoints" {
  count = local.lambda_reads_secret ? 1 : 0

  name        = "${local.name}-endpoints"
  description = "AWS API endpoints: from the Lambda function only"
  vpc_id      = aws_vpc.this.id
}

resource "aws_vpc_security_group_egress_rule" "lambda_to_endpoints" {
  count = local.lambda_reads_secret ? 1 : 0

  security_group_id            = aws_security_group.lambda.id
  referenced_security_group_id = aws_security_group.endpoints[0].id
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
  description                  = "HTTPS to the Secrets Manager endpoint"
}

resource "aws_vpc_security_group_ingress_rule" "endpoints_from_lambda" {
  count = local.lambda_reads_secret ? 1 : 0

  security_group_id            = aws_security_group.endpoints[0].id
  referenced_security_group_id = aws_security_group.lambda.id
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
  description                  = "HTTPS from the Lambda function"
}
