//! The saga, as two subscribers. Each reacts to one aggregate's events by sending commands to
//! another; `ctx.update` makes every command idempotent per triggering event, so a re-delivered
//! event changes nothing twice.

use eventuate_core::prelude::*;

use crate::account::{Account, AccountCredited, AccountDebitFailed, AccountDebited, Credit, Debit};
use crate::transfer::{Complete, Fail, MoneyTransfer, TransferInitiated};

/// Debits the source account of every new transfer.
pub struct DebitSource;

#[event_handler(subscribe = MoneyTransfer, id = "debit-source")]
impl DebitSource {
    async fn on_initiated(
        &self,
        ctx: &EventContext,
        event: &TransferInitiated,
    ) -> Result<(), HandlerError> {
        let debit = Debit {
            transfer_id: ctx.entity_id().to_owned(),
            amount: event.amount,
        };
        ctx.update::<Account>(&event.from, debit).await?;
        Ok(())
    }
}

/// Credits the target once the source was debited, and finishes the transfer.
pub struct SettleTransfer;

#[event_handler(subscribe = Account, id = "settle-transfer")]
impl SettleTransfer {
    async fn on_debited(
        &self,
        ctx: &EventContext,
        event: &AccountDebited,
    ) -> Result<(), HandlerError> {
        let transfer = ctx
            .repository()
            .load::<MoneyTransfer>(&event.transfer_id)
            .await?;
        let credit = Credit {
            transfer_id: event.transfer_id.clone(),
            amount: event.amount,
        };
        ctx.update::<Account>(&transfer.state.to, credit).await?;
        Ok(())
    }

    async fn on_credited(
        &self,
        ctx: &EventContext,
        event: &AccountCredited,
    ) -> Result<(), HandlerError> {
        ctx.update::<MoneyTransfer>(&event.transfer_id, Complete)
            .await?;
        Ok(())
    }

    async fn on_debit_failed(
        &self,
        ctx: &EventContext,
        event: &AccountDebitFailed,
    ) -> Result<(), HandlerError> {
        let reason = format!(
            "insufficient funds: balance {}, transfer {}",
            event.balance, event.amount
        );
        ctx.update::<MoneyTransfer>(&event.transfer_id, Fail { reason })
            .await?;
        Ok(())
    }
}
