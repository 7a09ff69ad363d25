# The AWS stack of the kit: Lambda -> RDS Proxy -> RDS PostgreSQL. The same files deploy to AWS and
# apply to the local twin (tflocal against the kit's AWS API emulator); nothing here is local-only.

terraform {
  required_version = ">= 1.11"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.80, < 6.0"
    }
  }
}

provider "aws" {
  region = var.region
  default_tags {
    tags = merge({ Project = "rds-proxy-local-twin", Stack = var.name_prefix }, var.tags)
  }
}

variable "region" {
  description = "AWS region to deploy into."
  type        = string
  default     = "us-east-1"
}

variable "name_prefix" {
  description = "Prefix of every resource name; give each deployment its own (the real-AWS stage adds a unique suffix)."
  type        = string
  default     = "local-twin"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,30}[a-z0-9]$", var.name_prefix)) && !strcontains(var.name_prefix, "--")
    error_message = "name_prefix: lower-case letters, digits and single hyphens, starting with a letter (RDS Proxy's naming rule)."
  }
}

variable "tags" {
  description = "Extra tags for every resource."
  type        = map(string)
  default     = {}
}

variable "vpc_cidr" {
  description = "CIDR block of the stack's VPC."
  type        = string
  default     = "10.42.0.0/16"
}

variable "db_instance_class" {
  description = "RDS instance class; its memory sets PostgreSQL's default max_connections."
  type        = string
  default     = "db.t4g.micro"
}

variable "db_engine_version" {
  description = "PostgreSQL major version of the RDS instance."
  type        = string
  default     = "16"
}

variable "db_allocated_storage" {
  description = "Storage of the RDS instance, in GiB."
  type        = number
  default     = 20
}

variable "db_name" {
  description = "Database the Lambda function uses."
  type        = string
  default     = "app"
}

variable "db_username" {
  description = "Database user of the proxy's secret; the Lambda function logs in to the proxy as this user."
  type        = string
  default     = "app_user"
}

variable "db_password_version" {
  description = "Increase to generate and store a new database password (it is write-only: never in the state)."
  type        = number
  default     = 1
}

variable "db_iam_database_authentication" {
  description = "IAM database authentication on the RDS instance: users granted rds_iam log in to it with IAM tokens."
  type        = bool
  default     = false
}

variable "proxy_require_tls" {
  description = "RDS Proxy require_tls: refuse clients without TLS."
  type        = bool
  default     = true
}

variable "proxy_iam_auth" {
  description = "RDS Proxy auth.iam_auth: REQUIRED (clients send an IAM auth token) or DISABLED (the secret's password)."
  type        = string
  default     = "REQUIRED"
  validation {
    condition     = contains(["REQUIRED", "DISABLED"], var.proxy_iam_auth)
    error_message = "proxy_iam_auth must be REQUIRED or DISABLED."
  }
}

variable "proxy_max_connections_percent" {
  description = "Share of the database's max_connections the proxy may open (connection_pool_config)."
  type        = number
  default     = 100
  validation {
    condition     = var.proxy_max_connections_percent >= 1 && var.proxy_max_connections_percent <= 100
    error_message = "proxy_max_connections_percent must be between 1 and 100."
  }
}

variable "proxy_max_idle_connections_percent" {
  description = "Share of max_connections the proxy keeps open while idle, at most proxy_max_connections_percent; null: half of it, as AWS defaults."
  type        = number
  default     = null
  validation {
    condition = var.proxy_max_idle_connections_percent == null ? true : (
      var.proxy_max_idle_connections_percent >= 0 &&
      var.proxy_max_idle_connections_percent <= var.proxy_max_connections_percent
    )
    error_message = "proxy_max_idle_connections_percent must be between 0 and proxy_max_connections_percent."
  }
}

variable "proxy_connection_borrow_timeout" {
  description = "Seconds a request waits for a pooled database connection before RDS Proxy's timeout error."
  type        = number
  default     = 120
}

variable "proxy_init_query" {
  description = "SQL RDS Proxy runs on every new database connection: the place for SETs that would otherwise pin."
  type        = string
  default     = ""
}

variable "proxy_idle_client_timeout" {
  description = "Seconds an idle client connection is kept before the proxy closes it."
  type        = number
  default     = 1800
}

variable "proxy_debug_logging" {
  description = "RDS Proxy enhanced logging (SQL text in the log; AWS turns it off after 24 hours)."
  type        = bool
  default     = false
}

variable "lambda_package" {
  description = "Path of the Lambda deployment zip (handler plus psycopg2 for the Lambda runtime), built by `python -m emulator package`."
  type        = string
}

variable "lambda_runtime" {
  description = "Lambda runtime; the package must be built for it."
  type        = string
  default     = "python3.12"
}

variable "lambda_timeout" {
  description = "Lambda timeout in seconds."
  type        = number
  default     = 30
}

variable "lambda_memory_size" {
  description = "Lambda memory in MB."
  type        = number
  default     = 256
}

variable "lambda_reserved_concurrency" {
  description = "Reserved concurrent executions of the function (-1: unreserved)."
  type        = number
  default     = -1
}

variable "stage_probe" {
  description = "Also deploy the probe function (lambda/probe.py) the real-AWS stage runs its SQL scenarios through."
  type        = bool
  default     = false
}

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_availability_zones" "available" {
  state = "available"
}

locals {
  name = var.name_prefix
}
