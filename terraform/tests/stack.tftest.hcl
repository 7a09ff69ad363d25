# Fast checks of what the stack declares, with a mock AWS provider: no account, no emulator.
# Run by the kit's tests as `terraform test -var lambda_package=<a built package>`.

mock_provider "aws" {
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_data "aws_secretsmanager_random_password" {
    defaults = { random_password = "mock-password-from-secrets-manager" }
  }
  # The documents' own inputs (statement blocks) stay as declared; only their rendering is mocked.
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}" }
  }
  mock_data "aws_availability_zones" {
    defaults = { names = ["us-east-1a", "us-east-1b"] }
  }
  mock_resource "aws_db_proxy" {
    defaults = {
      arn      = "arn:aws:rds:us-east-1:123456789012:db-proxy:prx-0123456789abcdef0"
      endpoint = "local-twin-proxy.proxy-abcdefghijkl.us-east-1.rds.amazonaws.com"
    }
  }
  # Every proxy's target group is named "default" (the mock would make up a name).
  mock_resource "aws_db_proxy_default_target_group" {
    defaults = { name = "default" }
  }
  mock_resource "aws_iam_role" {
    defaults = { arn = "arn:aws:iam::123456789012:role/mock" }
  }
  mock_resource "aws_secretsmanager_secret" {
    defaults = { arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:local-twin-db-credentials-AbCdEf" }
  }
}

run "proxy_pools_like_the_kit_documents" {
  command = apply

  assert {
    condition     = aws_db_proxy.this.engine_family == "POSTGRESQL" && aws_db_proxy.this.require_tls
    error_message = "the proxy must be PostgreSQL with TLS required"
  }
  assert {
    condition     = one(aws_db_proxy.this.auth).iam_auth == "REQUIRED" && one(aws_db_proxy.this.auth).auth_scheme == "SECRETS"
    error_message = "clients must use IAM tokens; the proxy logs in with the secret"
  }
  assert {
    condition     = one(aws_db_proxy.this.auth).secret_arn == aws_secretsmanager_secret.db.arn
    error_message = "the proxy must read the stack's own secret"
  }
  assert {
    condition     = one(aws_db_proxy_default_target_group.this.connection_pool_config).connection_borrow_timeout == 120
    error_message = "borrow timeout must be 120 s"
  }
  assert {
    condition     = one(aws_db_proxy_default_target_group.this.connection_pool_config).max_connections_percent == 100
    error_message = "max_connections_percent must be 100"
  }
  assert {
    condition     = one(aws_db_proxy_default_target_group.this.connection_pool_config).max_idle_connections_percent == 50
    error_message = "max_idle_connections_percent must be 50"
  }
  assert {
    condition     = aws_db_proxy_target.this.db_instance_identifier == aws_db_instance.this.identifier
    error_message = "the proxy's target must be the stack's instance"
  }
  assert {
    condition     = aws_db_instance.this.storage_encrypted && !aws_db_instance.this.publicly_accessible
    error_message = "the database must be encrypted and private"
  }
}

run "lambda_may_connect_only_as_the_db_user_of_this_proxy" {
  command = apply

  assert {
    condition     = output.proxy_dbuser_arn == "arn:aws:rds-db:us-east-1:123456789012:dbuser:prx-0123456789abcdef0/app_user"
    error_message = "rds-db:connect must name the proxy's resource id and the user: ${output.proxy_dbuser_arn}"
  }
  assert {
    condition     = one(data.aws_iam_policy_document.lambda_connect.statement).resources == toset([output.proxy_dbuser_arn])
    error_message = "the function's policy must allow exactly the proxy's dbuser ARN"
  }
  assert {
    condition     = one(data.aws_iam_policy_document.lambda_connect.statement).actions == toset(["rds-db:connect"])
    error_message = "the function's policy must allow rds-db:connect and nothing else"
  }
}

run "lambda_environment_points_at_the_proxy" {
  command = apply

  assert {
    condition = one(aws_lambda_function.this.environment).variables == tomap({
      DB_PROXY_ENDPOINT = aws_db_proxy.this.endpoint
      DB_PORT           = "5432"
      DB_NAME           = "app"
      DB_USER           = "app_user"
      DB_AUTH           = "iam"
      DB_SECRET_ARN     = aws_secretsmanager_secret.db.arn
      DB_SSLMODE        = "require"
    })
    error_message = "unexpected Lambda environment"
  }
  assert {
    condition     = aws_lambda_function.this.handler == "index.handler" && length(one(aws_lambda_function.this.vpc_config).subnet_ids) == 2
    error_message = "the function runs index.handler inside the VPC's two private subnets"
  }
  assert {
    condition     = length(aws_lambda_function.probe) == 0 && output.probe_function_name == null
    error_message = "the stage's probe is deployed only when stage_probe is true"
  }
  assert {
    condition     = length(aws_iam_role_policy.lambda_secret) == 0 && length(aws_vpc_endpoint.secretsmanager) == 0
    error_message = "with IAM auth the function neither may read the secret nor has an endpoint to (an endpoint is billed by the hour)"
  }
}

run "stage_probe_runs_inside_the_vpc_with_the_function_environment" {
  command = apply

  variables {
    stage_probe = true
  }

  assert {
    condition     = aws_lambda_function.probe[0].handler == "probe.handler" && output.probe_function_name == "local-twin-probe"
    error_message = "the probe is probe.handler, named after the stack"
  }
  assert {
    condition     = one(aws_lambda_function.probe[0].environment).variables == one(aws_lambda_function.this.environment).variables
    error_message = "the probe connects exactly as the function does"
  }
  assert {
    condition     = one(aws_lambda_function.probe[0].vpc_config).security_group_ids == toset([aws_security_group.lambda.id])
    error_message = "the probe sits in the function's security group, the one the proxy admits"
  }
}

run "security_groups_allow_lambda_to_proxy_to_db_on_5432_only" {
  command = apply

  assert {
    condition = alltrue([
      for rule in [
        aws_vpc_security_group_egress_rule.lambda_to_proxy,
        aws_vpc_security_group_ingress_rule.proxy_from_lambda,
        aws_vpc_security_group_egress_rule.proxy_to_db,
        aws_vpc_security_group_ingress_rule.db_from_proxy,
      ] : rule.from_port == 5432 && rule.to_port == 5432 && rule.ip_protocol == "tcp" && rule.cidr_ipv4 == null
    ])
    error_message = "every rule is TCP 5432 between security groups, never a CIDR"
  }
  assert {
    condition = (
      aws_vpc_security_group_ingress_rule.db_from_proxy.referenced_security_group_id == aws_security_group.proxy.id &&
      aws_vpc_security_group_ingress_rule.proxy_from_lambda.referenced_security_group_id == aws_security_group.lambda.id &&
      aws_vpc_security_group_egress_rule.lambda_to_proxy.referenced_security_group_id == aws_security_group.proxy.id &&
      aws_vpc_security_group_egress_rule.proxy_to_db.referenced_security_group_id == aws_security_group.db.id
    )
    error_message = "the chain must be Lambda -> proxy -> database"
  }
  assert {
    condition = (
      length(aws_security_group.endpoints) == 0 &&
      length(aws_vpc_security_group_egress_rule.lambda_to_endpoints) == 0 &&
      length(aws_vpc_security_group_ingress_rule.endpoints_from_lambda) == 0
    )
    error_message = "with IAM auth the function calls no AWS API: no endpoint security group, no rule on 443"
  }
}

run "pool_settings_and_auth_follow_the_variables" {
  command = apply

  # A document of its own, so that the assertion below can tell which one the function's policy is.
  override_data {
    target = data.aws_iam_policy_document.read_db_secret
    values = { json = "{\"Statement\":[{\"Sid\":\"ReadTheDatabaseSecret\"}]}" }
  }

  variables {
    proxy_iam_auth                     = "DISABLED"
    proxy_max_connections_percent      = 40
    proxy_max_idle_connections_percent = 20
    proxy_init_query                   = "SET search_path = app"
  }

  assert {
    condition     = one(aws_db_proxy_default_target_group.this.connection_pool_config).max_connections_percent == 40
    error_message = "max_connections_percent must follow the variable"
  }
  assert {
    condition     = one(aws_db_proxy_default_target_group.this.connection_pool_config).init_query == "SET search_path = app"
    error_message = "init_query must follow the variable"
  }
  assert {
    condition     = one(aws_lambda_function.this.environment).variables["DB_AUTH"] == "secret"
    error_message = "without IAM auth the function logs in with the secret's password"
  }
  assert {
    condition = (
      one(aws_iam_role_policy.lambda_secret).role == aws_iam_role.lambda.id &&
      one(aws_iam_role_policy.lambda_secret).policy == data.aws_iam_policy_document.read_db_secret.json &&
      [for statement in data.aws_iam_policy_document.read_db_secret.statement : statement.resources if contains(statement.actions, "secretsmanager:GetSecretValue")] == [toset([aws_secretsmanager_secret.db.arn])]
    )
    error_message = "the function may read the database secret, and no other"
  }
  assert {
    condition = (
      one(aws_vpc_endpoint.secretsmanager).vpc_id == aws_vpc.this.id &&
      one(aws_vpc_endpoint.secretsmanager).service_name == "com.amazonaws.us-east-1.secretsmanager" &&
      one(aws_vpc_endpoint.secretsmanager).vpc_endpoint_type == "Interface" &&
      one(aws_vpc_endpoint.secretsmanager).private_dns_enabled &&
      one(aws_vpc_endpoint.secretsmanager).subnet_ids == toset(aws_subnet.private[*].id)
    )
    error_message = "the private subnets reach Secrets Manager through an interface endpoint whose private DNS the SDK's default name resolves to"
  }
  assert {
    condition = (
      one(aws_vpc_endpoint.secretsmanager).security_group_ids == toset([one(aws_security_group.endpoints).id]) &&
      one(aws_vpc_security_group_egress_rule.lambda_to_endpoints).security_group_id == aws_security_group.lambda.id &&
      one(aws_vpc_security_group_egress_rule.lambda_to_endpoints).referenced_security_group_id == one(aws_security_group.endpoints).id &&
      one(aws_vpc_security_group_ingress_rule.endpoints_from_lambda).security_group_id == one(aws_security_group.endpoints).id &&
      one(aws_vpc_security_group_ingress_rule.endpoints_from_lambda).referenced_security_group_id == aws_security_group.lambda.id &&
      alltrue([
        for rule in [one(aws_vpc_security_group_egress_rule.lambda_to_endpoints), one(aws_vpc_security_group_ingress_rule.endpoints_from_lambda)] :
        rule.from_port == 443 && rule.to_port == 443 && rule.ip_protocol == "tcp" && rule.cidr_ipv4 == null
      ])
    )
    error_message = "the function reaches the endpoint on TCP 443, between security groups"
  }
}

run "idle_share_defaults_to_half_the_pool_share" {
  command = apply

  variables {
    proxy_max_connections_percent = 40
  }

  assert {
    condition     = one(aws_db_proxy_default_target_group.this.connection_pool_config).max_idle_connections_percent == 20
    error_message = "without proxy_max_idle_connections_percent, the idle share is half the pool share (AWS's default)"
  }
}

run "idle_share_above_the_pool_share_is_refused" {
  command = plan

  variables {
    proxy_max_connections_percent      = 40
    proxy_max_idle_connections_percent = 50
  }

  expect_failures = [var.proxy_max_idle_connections_percent]
}

run "name_prefix_must_be_a_valid_proxy_name" {
  command = plan

  variables {
    name_prefix = "Bad--Name"
  }

  expect_failures = [var.name_prefix]
}
