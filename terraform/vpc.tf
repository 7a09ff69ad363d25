# A VPC with private subnets in two zones: RDS needs two zones for its subnet group, and the proxy
# and the function stay private (RDS Proxy can't be publicly accessible). No internet route: the
# one AWS API the function may call from inside (Secrets Manager, when it reads the secret) has an
# interface endpoint here.

resource "aws_vpc" "this" {
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true
  tags                 = { Name = "${local.name}-vpc" }
}

resource "aws_subnet" "private" {
  count             = 2
  vpc_id            = aws_vpc.this.id
  cidr_block        = cidrsubnet(var.vpc_cidr, 8, count.index)
  availability_zone = data.aws_availability_zones.available.names[count.index]
  tags              = { Name = "${local.name}-private-${count.index}" }
}

resource "aws_db_subnet_group" "this" {
  name       = "${local.name}-db"
  subnet_ids = aws_subnet.private[*].id
}

# Only with IAM auth DISABLED, when the function reads the secret (an interface endpoint is billed by
# the hour). Private DNS: the SDK's default secretsmanager.REGION.amazonaws.com resolves to it.
resource "aws_vpc_endpoint" "secretsmanager" {
  count = local.lambda_reads_secret ? 1 : 0

  vpc_id              = aws_vpc.this.id
  service_name        = "com.amazonaws.${var.region}.secretsmanager"
  vpc_endpoint_type   = "Interface"
  private_dns_enabled = true
  subnet_ids          = aws_subnet.private[*].id
  security_group_ids  = [aws_security_group.endpoints[0].id]
  tags                = { Name = "${local.name}-secretsmanager" }
}
