# An example root: AgentOS in an existing VPC. Copy this directory, fill in terraform.tfvars
# (see the README), then `terraform init && terraform apply`.

terraform {
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.40"
    }
  }
}

provider "aws" {
  region = var.region
}

variable "region" {
  description = "AWS region."
  type        = string
  default     = "eu-west-1"
}

variable "image" {
  description = "The AgentOS image in ECR, with its tag."
  type        = string
}

variable "vpc_id" {
  description = "The VPC."
  type        = string
}

variable "public_subnet_ids" {
  description = "Public subnets, two availability zones or more."
  type        = list(string)
}

variable "private_subnet_ids" {
  description = "Private subnets with a NAT route, two availability zones or more."
  type        = list(string)
}

variable "certificate_arn" {
  description = "ACM certificate for the API's domain."
  type        = string
}

module "agentos" {
  source = "../../modules/agentos-aws"

  name               = "agentos"
  image              = var.image
  vpc_id             = var.vpc_id
  public_subnet_ids  = var.public_subnet_ids
  private_subnet_ids = var.private_subnet_ids
  certificate_arn    = var.certificate_arn
  api_count          = 2
  worker_min         = 1
  worker_max         = 10
  tags               = { "environment" = "production" }
}

output "api_url" {
  description = "The API."
  value       = module.agentos.api_url
}

output "migrate_task_definition" {
  description = "Run before each release."
  value       = module.agentos.migrate_task_definition
}

output "task_network" {
  description = "Network of the migration task."
  value       = module.agentos.task_network
}

output "secret_arns" {
  description = "Secrets to fill in (model keys, sandbox token)."
  value       = module.agentos.secret_arns
}
