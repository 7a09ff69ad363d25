output "proxy_name" {
  description = "RDS Proxy name (the ProxyName dimension of its CloudWatch metrics)."
  value       = aws_db_proxy.this.name
}

output "proxy_endpoint" {
  description = "Host name clients connect to, and generate IAM tokens for."
  value       = aws_db_proxy.this.endpoint
}

output "proxy_arn" {
  value = aws_db_proxy.this.arn
}

output "proxy_dbuser_arn" {
  description = "The rds-db:connect resource the function is allowed."
  value       = local.proxy_dbuser_arn
}

output "db_instance_identifier" {
  description = "The proxy's target (the Target dimension of its CloudWatch metrics)."
  value       = aws_db_instance.this.identifier
}

output "db_name" {
  value = var.db_name
}

output "db_username" {
  value = var.db_username
}

output "secret_arn" {
  description = "The Secrets Manager secret with the database credentials."
  value       = aws_secretsmanager_secret.db.arn
}

output "lambda_function_name" {
  value = aws_lambda_function.this.function_name
}

output "probe_function_name" {
  description = "The stage's probe function (null unless stage_probe is true)."
  value       = one(aws_lambda_function.probe[*].function_name)
}

output "proxy_log_group" {
  description = "Where RDS Proxy writes its log (pin reasons)."
  value       = "/aws/rds/proxy/${aws_db_proxy.this.name}"
}
