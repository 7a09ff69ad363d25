# RDS for PostgreSQL: private, encrypted, with its own parameter group. PostgreSQL's max_connections
# comes from the instance class's memory; the proxy's pool is a share of it.

resource "aws_db_parameter_group" "this" {
  name_prefix = "${local.name}-pg${var.db_engine_version}-"
  family      = "postgres${var.db_engine_version}"
  description = "PostgreSQL settings of the local twin's database"

  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }

  parameter {
    name  = "log_connections"
    value = "1"
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_db_instance" "this" {
  identifier                 = "${local.name}-db"
  engine                     = "postgres"
  engine_version             = var.db_engine_version
  instance_class             = var.db_instance_class
  allocated_storage          = var.db_allocated_storage
  storage_encrypted          = true
  db_name                    = var.db_name
  username                   = var.db_username
  password_wo                = data.aws_secretsmanager_random_password.db.random_password
  password_wo_version        = var.db_password_version
  db_subnet_group_name       = aws_db_subnet_group.this.name
  vpc_security_group_ids     = [aws_security_group.db.id]
  parameter_group_name       = aws_db_parameter_group.this.name
  publicly_accessible        = false
  skip_final_snapshot        = true
  deletion_protection        = false
  backup_retention_period    = 0
  apply_immediately          = true
  auto_minor_version_upgrade = true

  iam_database_authentication_enabled = var.db_iam_database_authentication
}
