//! The `MoneyTransfer` aggregate: initiated by a user, then completed or failed by the saga.

use eventuate_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferInitiated {
    pub from: String,
    pub to: String,
    pub amount: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferCompleted {}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferFailed {
    pub reason: String,
}

#[derive(Debug, Clone, Events)]
pub enum TransferEvent {
    Initiated(TransferInitiated),
    Completed(TransferCompleted),
    Failed(TransferFailed),
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum TransferState {
    #[default]
    New,
    Pending,
    Completed,
    Failed,
}

#[aggregate(name = "MoneyTransfer", events = TransferEvent)]
#[derive(Debug, Default, Clone)]
pub struct MoneyTransfer {
    pub from: String,
    pub to: String,
    pub amount: u64,
    pub state: TransferState,
}

pub struct Initiate {
    pub from: String,
    pub to: String,
    pub amount: u64,
}

pub struct Complete;

pub struct Fail {
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("a transfer needs two different accounts and a positive amount")]
    Invalid,
    #[error("the transfer is already {0:?}")]
    AlreadyFinished(TransferState),
}

#[command_handler]
impl MoneyTransfer {
    fn initiate(&self, command: &Initiate) -> Result<TransferInitiated, TransferError> {
        if command.amount == 0 || command.from == command.to {
            return Err(TransferError::Invalid);
        }
        Ok(TransferInitiated {
            from: command.from.clone(),
            to: command.to.clone(),
            amount: command.amount,
        })
    }

    fn complete(&self, _: &Complete) -> Result<Vec<TransferCompleted>, TransferError> {
        match self.state {
            TransferState::Pending => Ok(vec![TransferCompleted {}]),
            // Completing twice is a no-op: re-delivered events must change nothing.
            TransferState::Completed => Ok(vec![]),
            other => Err(TransferError::AlreadyFinished(other)),
        }
    }

    fn fail(&self, command: &Fail) -> Result<Vec<TransferFailed>, TransferError> {
        match self.state {
            TransferState::Pending => Ok(vec![TransferFailed {
                reason: command.reason.clone(),
            }]),
            TransferState::Failed => Ok(vec![]),
            other => Err(TransferError::AlreadyFinished(other)),
        }
    }

    #[apply]
    fn initiated(&mut self, event: &TransferInitiated) {
        self.from = event.from.clone();
        self.to = event.to.clone();
        self.amount = event.amount;
        self.state = TransferState::Pending;
    }

    #[apply]
    fn completed(&mut self, _: &TransferCompleted) {
        self.state = TransferState::Completed;
    }

    #[apply]
    fn failed(&mut self, _: &TransferFailed) {
        self.state = TransferState::Failed;
    }
}
