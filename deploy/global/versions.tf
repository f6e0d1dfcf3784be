# Global routing of tickmesh: Route 53 (per-region names, latency-based answers with
# health checks, failover to Global Accelerator), Global Accelerator (anycast entry
# with per-region traffic dials), and CloudFront for the dashboard with origin failover.
# Inputs: the NLBs that the Kubernetes overlays create (terraform.tfvars.example).
# Runbook: deploy/README.md "Global routing".

terraform {
  required_version = ">= 1.6.0"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.70"
    }
  }
}

# Route 53, CloudFront and WAF for CloudFront are global services managed from us-east-1.
provider "aws" {
  region = "us-east-1"
  default_tags {
    tags = {
      "app.kubernetes.io/part-of" = "tickmesh"
      "tickmesh.io/stack"         = "global"
    }
  }
}

# The Global Accelerator API lives in us-west-2 only.
provider "aws" {
  alias  = "accelerator"
  region = "us-west-2"
  default_tags {
    tags = {
      "app.kubernetes.io/part-of" = "tickmesh"
      "tickmesh.io/stack"         = "global"
    }
  }
}
